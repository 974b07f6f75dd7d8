"""Several worker processes sharing one listening socket (``[server] workers = N``).

``twistd -n angosd`` with N > 1 is a supervisor: it binds the socket once, starts N workers
(``python -m angosd.daemon.workers.main``), each serving exactly what a single daemon serves on
that socket, and keeps them running. One module per job:

- `cpus`: the default N (usable cores);
- `listening`: the shared socket, bound by the supervisor, adopted by each worker;
- `supervisor`: starting, replacing, signalling and stopping workers;
- `forks`, `forkserver`: the fork server, which forks the workers from the supervisor's imports
  (shared memory): the supervisor's side, the fork server's side;
- `parent`: the supervisor's service tree (socket, workers, GC, systemd);
- `main`: a worker process;
- `status`, `logrelay`: what a worker tells its supervisor (state, log events);
- `rundir`: the per-run directory the workers share (metrics files).

``docs/ARCHITECTURE.md`` ("Processes: workers") describes the whole.
"""
