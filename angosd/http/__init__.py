"""HTTP: routing, the streaming request class, the Klein application, error mapping."""
