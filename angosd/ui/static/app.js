// angosd web UI: a small single-page app over the OCI API and the /v2/_ext/ listings.
// Plain ES module, no dependencies, no build step. Every element is built with h(), never
// from HTML strings, so names, tags and annotations can never inject markup.

const app = document.getElementById("app");
const MANIFEST_ACCEPT = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");
const INDEX_TYPES = new Set([
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
]);
const ANNOTATION_NAMES = {
  "org.opencontainers.image.created": "Created",
  "org.opencontainers.image.authors": "Authors",
  "org.opencontainers.image.url": "URL",
  "org.opencontainers.image.documentation": "Documentation",
  "org.opencontainers.image.source": "Source",
  "org.opencontainers.image.version": "Version",
  "org.opencontainers.image.revision": "Revision",
  "org.opencontainers.image.vendor": "Vendor",
  "org.opencontainers.image.licenses": "Licenses",
  "org.opencontainers.image.ref.name": "Reference name",
  "org.opencontainers.image.title": "Title",
  "org.opencontainers.image.description": "Description",
  "org.opencontainers.image.base.digest": "Base image digest",
  "org.opencontainers.image.base.name": "Base image",
};
const LINK_ANNOTATIONS = new Set([
  "org.opencontainers.image.url", "org.opencontainers.image.documentation", "org.opencontainers.image.source",
]);

// ------------------------------------------------------------------ icons

const ICONS = {
  chevron: ["M9 6l6 6-6 6"],
  copy: ["M9 9h10v10H9z", "M5 15V5h10"],
  check: ["M5 12.5l4.5 4.5L19 7.5"],
  trash: ["M4 7h16", "M10 11v6", "M14 11v6", "M6 7l1 13h10l1-13", "M9 7V4h6v3"],
  x: ["M6 6l12 12", "M18 6L6 18"],
  sun: ["M12 8a4 4 0 1 0 0 8 4 4 0 0 0 0-8z", "M12 2v2", "M12 20v2", "M4.9 4.9l1.4 1.4", "M17.7 17.7l1.4 1.4",
        "M2 12h2", "M20 12h2", "M4.9 19.1l1.4-1.4", "M17.7 6.3l1.4-1.4"],
  moon: ["M20 14.5A8 8 0 0 1 9.5 4a8 8 0 1 0 10.5 10.5z"],
  lock: ["M6 11h12v9H6z", "M8.5 11V8a3.5 3.5 0 0 1 7 0v3"],
  alert: ["M12 4l9 16H3z", "M12 10v4", "M12 17v.5"],
  search: ["M10.5 4a6.5 6.5 0 1 0 0 13 6.5 6.5 0 0 0 0-13z", "M20 20l-4.8-4.8"],
  cloud: ["M7 18h10a4 4 0 0 0 .5-8 5.5 5.5 0 0 0-10.6 1.5A3.3 3.3 0 0 0 7 18z"],
  shield: ["M12 3l7 3v6c0 4.5-3 7.5-7 9-4-1.5-7-4.5-7-9V6z"],
  download: ["M12 4v11", "M7.5 10.5L12 15l4.5-4.5", "M5 19h14"],
  box: ["M4 8l8-4 8 4v8l-8 4-8-4z", "M4 8l8 4 8-4", "M12 12v8"],
};

function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "2");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  svg.setAttribute("aria-hidden", "true");
  for (const d of ICONS[name]) {
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

// ------------------------------------------------------------------ DOM helper

function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

// ------------------------------------------------------------------ formatting

function shortDigest(digest) {
  const [algorithm, hex] = String(digest).split(":");
  return hex ? `${algorithm}:${hex.slice(0, 12)}` : String(digest);
}

function formatSize(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

function timeAgo(epoch) {
  const seconds = Math.round(epoch - Date.now() / 1000);
  const steps = [[60, "second"], [60, "minute"], [24, "hour"], [30, "day"], [12, "month"], [Infinity, "year"]];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return relative.format(Math.round(value), unit);
    value /= size;
  }
  return "";
}

function time(epoch, never = "never") {
  if (epoch === null || epoch === undefined) return h("span", { class: "faint" }, never);
  const date = new Date(epoch * 1000);
  return h("time", { datetime: date.toISOString(), title: date.toLocaleString() }, timeAgo(epoch));
}

function platformText(platform) {
  if (!platform) return null;
  const parts = [platform.os || "unknown", platform.architecture || "unknown"];
  if (platform.variant) parts.push(platform.variant);
  return parts.join("/");
}

// ------------------------------------------------------------------ API access

class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  } catch (error) {
    throw new ApiError(0, "NETWORK", "The registry could not be reached.", String(error));
  }
  if (!response.ok) {
    let code = `HTTP_${response.status}`;
    let message = response.statusText || "request failed";
    let detail = null;
    try {
      const body = await response.json();
      const first = body && body.errors && body.errors[0];
      if (first) { code = first.code || code; message = first.message || message; detail = first.detail ?? null; }
    } catch (error) { /* not an OCI error body */ }
    throw new ApiError(response.status, code, message, detail);
  }
  return response;
}

async function getJSON(path) {
  return (await request(path, { headers: { Accept: "application/json" } })).json();
}

// A paged listing whole: follows its Link headers (rel="next", same origin) and returns the
// first page's body with `key` holding the items of every page.
async function getAllPages(path, key) {
  let body = null;
  let next = path;
  while (next) {
    const response = await request(next, { headers: { Accept: "application/json" } });
    const page = await response.json();
    if (body === null) body = page; else body[key] = body[key].concat(page[key] || []);
    const match = /<([^>]+)>;\s*rel="next"/.exec(response.headers.get("Link") || "");
    next = match && match[1].startsWith("/v2/") ? match[1] : null;
  }
  return body;
}

const ext = {
  repositories: () => getAllPages("/v2/_ext/_repositories", "repositories"),
  namespaces: (repository) => getAllPages(`/v2/_ext/${repository}/_namespaces`, "namespaces"),
  // Pages come in digest order: shown newest push first.
  revisions: (namespace) => getAllPages(`/v2/_ext/${namespace}/_revisions?n=1000`, "revisions").then((body) => {
    body.revisions.sort((a, b) => (b.pushed_at || 0) - (a.pushed_at || 0) || (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
    return body;
  }),
  uploads: (namespace) => getJSON(`/v2/_ext/${namespace}/_uploads`),
};

// ------------------------------------------------------------------ routes and links

const repositoryNames = new Set();

function repositoryOf(namespace, repositories) {
  let best = null;
  for (const repository of repositories) {
    const name = repository.name;
    if ((namespace === name || namespace.startsWith(name + "/")) && (!best || name.length > best.name.length)) {
      best = repository;
    }
  }
  return best;
}

// Links are built from names that come from the URL: every segment is percent-encoded, so
// none can turn a link into another site's ("/\evil.example" is "//evil.example" to browsers).
const segments = (name) => name.split("/").map(encodeURIComponent).join("/");
const links = {
  home: () => "/",
  repository: (name) => `/${segments(name)}`,
  // A namespace equal to a repository's name gets a trailing slash: "/library" is the
  // repository page, "/library/" the manifests of the namespace "library".
  namespace: (namespace) => (repositoryNames.has(namespace) ? `/${segments(namespace)}/` : `/${segments(namespace)}`),
  tag: (namespace, tag) => `/${segments(namespace)}:${encodeURIComponent(tag)}`,
  digest: (namespace, digest) => `/${segments(namespace)}@${encodeURIComponent(digest).replace(/%3A/gi, ":")}`,
};

function parseLocation() {
  let path;
  try { path = decodeURIComponent(location.pathname); } catch (error) { path = location.pathname; }
  path = path.replace(/^\/+/, "");
  if (!path) return { view: "repositories" };
  const at = path.indexOf("@");
  if (at >= 0) return { view: "manifest", namespace: path.slice(0, at).replace(/\/+$/, ""), reference: path.slice(at + 1) };
  const colon = path.indexOf(":", path.lastIndexOf("/") + 1);
  if (colon >= 0) return { view: "manifest", namespace: path.slice(0, colon), reference: path.slice(colon + 1) };
  if (path.endsWith("/")) return { view: "namespace", namespace: path.replace(/\/+$/, "") };
  return { view: "path", name: path };
}

function navigate(url, replace = false) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  window.scrollTo(0, 0);
  render();
}

document.addEventListener("click", (event) => {
  const anchor = event.target.closest("a");
  if (!anchor || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  if (anchor.target || anchor.hasAttribute("download") || anchor.origin !== location.origin) return;
  if (anchor.pathname.startsWith("/v2/") || anchor.pathname.startsWith("/_ui/")) return;
  event.preventDefault();
  navigate(anchor.pathname);
});
window.addEventListener("popstate", () => render());

// ------------------------------------------------------------------ shared widgets

function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const area = h("textarea", { class: "visually-hidden", readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  try { document.execCommand("copy"); } finally { area.remove(); }
  return Promise.resolve();
}

function copyButton(text, label = "Copy digest") {
  const button = h("button", { type: "button", class: "copy", title: label, "aria-label": label }, icon("copy"));
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    try {
      await copyText(text);
      button.classList.add("done");
      button.replaceChildren(icon("check"));
      toast("Copied to the clipboard");
      setTimeout(() => { button.classList.remove("done"); button.replaceChildren(icon("copy")); }, 1500);
    } catch (error) {
      toast("Could not copy: " + error, true);
    }
  });
  return button;
}

function digestLink(namespace, digest, { full = false } = {}) {
  return h("span", { class: "digest" },
    h("a", { href: links.digest(namespace, digest), title: digest }, full ? digest : shortDigest(digest)),
    copyButton(digest));
}

function badge(text, color, iconName) {
  return h("span", { class: `badge ${color || ""}` }, iconName ? icon(iconName) : null, text);
}

function repositoryBadges(repository) {
  if (!repository) return [];
  return [
    repository.is_pull_through ? badge("Pull-through", "blue", "cloud") : null,
    repository.immutable_tags ? badge("Immutable tags", "purple", "shield") : null,
  ];
}

function referrerKind(descriptor) {
  const type = (descriptor.artifact_type || "").toLowerCase();
  const annotations = descriptor.annotations || {};
  if (annotations["vnd.docker.reference.type"] === "attestation-manifest") return ["attestation", "amber"];
  if (/signature|cosign|notary|\.sig\b/.test(type)) return ["signature", "green"];
  if (/sbom|spdx|cyclonedx|syft/.test(type)) return ["SBOM", "orange"];
  if (/in-toto|attestation|provenance|slsa|intoto/.test(type)) return ["attestation", "amber"];
  if (/vuln|sarif|scan/.test(type)) return ["scan report", "red"];
  return ["artifact", "gray"];
}

function kindBadges(revision) {
  const badges = [];
  if (INDEX_TYPES.has(revision.media_type)) badges.push(badge("Index", "teal"));
  else if (revision.artifact_type || revision.subject) {
    const [label, color] = referrerKind(revision);
    badges.push(h("span", { class: `badge ${color}`, title: revision.artifact_type || "" }, label));
  } else badges.push(badge("Image", ""));
  const platform = platformText(revision.platform);
  if (platform) badges.push(h("span", { class: "badge outline" }, platform));
  return badges;
}

function toast(text, isError = false) {
  const element = h("div", { class: `toast${isError ? " error" : ""}` }, text);
  document.getElementById("toasts").append(element);
  setTimeout(() => element.remove(), isError ? 6000 : 2500);
}

function confirmDialog(title, body, confirmLabel) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-body").replaceChildren(...body);
  document.getElementById("confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "";
  dialog.showModal();
  document.getElementById("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
  });
}

function crumbs(...items) {
  const nav = h("nav", { class: "crumbs", "aria-label": "Breadcrumb" });
  items.forEach((item, index) => {
    if (index > 0) nav.append(h("span", { class: "sep", "aria-hidden": "true" }, "/"));
    nav.append(item.href ? h("a", { href: item.href }, item.label) : h("span", { class: "current" }, item.label));
  });
  return nav;
}

function pageHead(title, meta, actions) {
  return h("div", { class: "page-head" },
    h("div", { class: "page-title" }, h("h1", {}, title), meta ? h("div", { class: "page-meta" }, meta) : null),
    actions ? h("div", { class: "page-actions" }, actions) : null);
}

function panel(title, count, body, extra) {
  return h("section", { class: "panel" },
    h("div", { class: "panel-head" },
      h("h2", {}, title, count !== null && count !== undefined ? h("span", { class: "count" }, count) : null),
      extra || null),
    body);
}

function table(columns, rows) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class || null, scope: "col" }, c.label)))),
      h("tbody", {}, rows)));
}

function filterBox(placeholder, rows, textOf) {
  const input = h("input", { type: "search", class: "filter", placeholder, "aria-label": placeholder });
  input.addEventListener("input", () => {
    const wanted = input.value.trim().toLowerCase();
    for (const row of rows) row.hidden = wanted !== "" && !textOf(row).toLowerCase().includes(wanted);
  });
  return input;
}

function namespaceTitle(namespace, repository) {
  if (repository && namespace !== repository.name && namespace.startsWith(repository.name + "/")) {
    return [h("span", { class: "prefix" }, repository.name + "/"), namespace.slice(repository.name.length + 1)];
  }
  return [namespace];
}

function emptyRow(columns, text) {
  return h("tr", {}, h("td", { colspan: String(columns), class: "empty" }, text));
}

// ------------------------------------------------------------------ messages

function describeError(error, what) {
  if (!(error instanceof ApiError)) {
    return { kind: "error", title: "Something went wrong", text: String(error && error.message ? error.message : error) };
  }
  switch (error.status) {
    case 401:
      return { kind: "auth", title: "Sign-in required",
               text: "This registry needs credentials. Reload the page and sign in when your browser asks "
                   + "for a user name and password, or present a client certificate." };
    case 403:
      return { kind: "auth", title: "Access denied",
               text: `You are signed in, but the registry's access policy does not allow you to ${what}.` };
    case 404:
      return { kind: "error", title: "Not found",
               text: "Nothing exists at this address. It may have been deleted, or the name is misspelled." };
    case 0:
      return { kind: "error", title: "Registry unreachable", text: "The registry did not answer. Check your connection and try again." };
    default:
      return { kind: "error", title: `The registry answered ${error.status}`, text: `Could not ${what}.` };
  }
}

function messagePanel(error, what) {
  const info = describeError(error, what);
  const code = error instanceof ApiError
    ? `${error.status ? error.status + " " : ""}${error.code}${error.detail ? ": " + (typeof error.detail === "string" ? error.detail : JSON.stringify(error.detail)) : ""}`
    : null;
  return h("section", { class: `panel message ${info.kind}`, role: "alert", dataset: { status: error && error.status ? String(error.status) : "" } },
    h("div", { class: "message-icon" }, icon(info.kind === "auth" ? "lock" : "alert")),
    h("div", {},
      h("h1", {}, info.title),
      h("p", {}, info.text),
      code ? h("div", { class: "error-code" }, code) : null,
      h("div", { class: "message-actions" },
        h("button", { type: "button", class: "button", onclick: () => location.reload() }, "Try again"),
        location.pathname !== "/" ? h("a", { class: "button", href: "/" }, "All repositories") : null)));
}

function showError(error, what, trail) {
  app.replaceChildren(trail || crumbs({ label: "Repositories", href: "/" }), messagePanel(error, what));
}

// ------------------------------------------------------------------ view: repositories

async function viewRepositories(token) {
  const { repositories } = await ext.repositories();
  if (token !== renderToken) return;
  const rows = repositories.map((repository) => h("tr", { dataset: { name: repository.name } },
    h("td", {}, h("a", { class: "name-link", href: links.repository(repository.name) }, repository.name)),
    h("td", { class: "num" }, repository.namespaces_more ? `${repository.namespaces}+` : repository.namespaces),
    h("td", {}, h("span", { class: "badges" }, repositoryBadges(repository)))));
  const body = rows.length
    ? table([{ label: "Repository" }, { label: "Namespaces", class: "num" }, { label: "" }], rows)
    : h("div", { class: "empty" }, "Nothing stored yet. Push an image, e.g. ",
        h("code", {}, `skopeo copy oci:image docker://${location.host}/team/app:1.0`));
  app.replaceChildren(
    pageHead("Repositories", [`${repositories.length} ${repositories.length === 1 ? "repository" : "repositories"}`]),
    panel("All repositories", repositories.length, body,
      rows.length > 5 ? filterBox("Filter repositories", rows, (row) => row.dataset.name) : null));
}

// ------------------------------------------------------------------ view: one repository

async function viewRepository(token, name, repositories) {
  const repository = repositories.find((r) => r.name === name);
  const { namespaces } = await ext.namespaces(name);
  if (token !== renderToken) return;
  const rows = namespaces.map((namespace) => h("tr", { dataset: { name: namespace.name } },
    h("td", {}, h("a", { class: "name-link", href: links.namespace(namespace.name) }, namespaceTitle(namespace.name, repository))),
    h("td", { class: "num" }, namespace.manifests),
    h("td", { class: "num hide-xs" }, namespace.tags ?? "—"),
    h("td", { class: "num" }, namespace.uploads ? badge(String(namespace.uploads), "amber") : h("span", { class: "faint" }, "0"))));
  const body = rows.length
    ? table([{ label: "Namespace" }, { label: "Manifests", class: "num" }, { label: "Tags", class: "num hide-xs" },
             { label: "Uploads", class: "num" }], rows)
    : h("div", { class: "empty" }, "No namespace holds anything in this repository yet.");
  const total = namespaces.reduce((sum, n) => sum + n.manifests, 0);
  app.replaceChildren(
    crumbs({ label: "Repositories", href: "/" }, { label: name }),
    pageHead(name, [repositoryBadges(repository),
      h("span", {}, `${namespaces.length} ${namespaces.length === 1 ? "namespace" : "namespaces"} · ${total} ${total === 1 ? "manifest" : "manifests"}`)]),
    panel("Namespaces", namespaces.length, body,
      rows.length > 5 ? filterBox("Filter namespaces", rows, (row) => row.dataset.name) : null));
}

// ------------------------------------------------------------------ view: a namespace's manifests

function namespaceCrumbs(namespace, repository, last) {
  const items = [{ label: "Repositories", href: "/" }];
  if (repository) items.push({ label: repository.name, href: links.repository(repository.name) });
  const short = repository && namespace.startsWith(repository.name + "/") ? namespace.slice(repository.name.length + 1) : namespace;
  items.push(last ? { label: short, href: links.namespace(namespace) } : { label: short });
  if (last) items.push({ label: last });
  return crumbs(...items);
}

async function deleteManifest(namespace, reference, description) {
  const isTag = !reference.includes(":");
  const confirmed = await confirmDialog(
    isTag ? "Delete tag?" : "Delete manifest?",
    isTag
      ? [h("p", {}, "Remove the tag ", h("code", {}, reference), " from ", h("code", {}, namespace), "?"),
         h("p", {}, "The manifest it points at stays, reachable by digest and by its other tags.")]
      : [h("p", {}, "Delete the manifest ", h("code", {}, shortDigest(reference)), " from ", h("code", {}, namespace), "?"),
         description ? h("p", {}, description) : null,
         h("p", {}, "This cannot be undone.")],
    isTag ? "Delete tag" : "Delete manifest");
  if (!confirmed) return false;
  try {
    await request(`/v2/${namespace}/manifests/${reference}`, { method: "DELETE", headers: { "X-Angosd-Browse": "1" } });
  } catch (error) {
    toast(`${describeError(error, "delete").title}: ${error.code || error}`, true);
    return false;
  }
  toast(isTag ? `Tag ${reference} deleted` : `Manifest ${shortDigest(reference)} deleted`);
  return true;
}

async function cancelUpload(namespace, uuid) {
  const confirmed = await confirmDialog("Cancel upload?",
    [h("p", {}, "Cancel the upload ", h("code", {}, uuid), " to ", h("code", {}, namespace), "?"),
     h("p", {}, "The bytes received so far are discarded; a client still sending will fail.")],
    "Cancel upload");
  if (!confirmed) return false;
  try {
    await request(`/v2/${namespace}/blobs/uploads/${uuid}`, { method: "DELETE", headers: { "X-Angosd-Browse": "1" } });
  } catch (error) {
    toast(`${describeError(error, "cancel").title}: ${error.code || error}`, true);
    return false;
  }
  toast("Upload cancelled");
  return true;
}

function tagChips(namespace, tags) {
  return tags.map((tag) => h("span", { class: "tag", dataset: { tag } }, h("a", { href: links.tag(namespace, tag) }, tag)));
}

function manifestRows(namespace, revision, byDigest, depth, via) {
  // One row for ``revision`` plus, once expanded, rows for its children and referrers.
  const children = (revision.children || []).map((child) => ({ descriptor: child, known: byDigest.get(child.digest) }));
  const referrers = (revision.referrers || [])
    .filter((r) => !children.some((c) => c.descriptor.digest === r.digest))
    .map((r) => ({ descriptor: r, known: byDigest.get(r.digest), referrer: true }));
  const nested = [...children, ...referrers];
  const row = h("tr", { class: depth ? `child depth-${Math.min(depth, 3)}` : "", dataset: { digest: revision.digest, depth: String(depth) } });
  let expanded = false;
  const extraRows = [];
  const toggle = nested.length
    ? h("button", { type: "button", class: "toggle", "aria-expanded": "false",
                    "aria-label": `Show ${nested.length} nested manifests of ${shortDigest(revision.digest)}`,
                    title: "Show platforms and referrers" }, icon("chevron"))
    : depth ? null : h("span", { class: "toggle-spacer" });
  if (nested.length) {
    toggle.addEventListener("click", () => {
      expanded = !expanded;
      toggle.setAttribute("aria-expanded", String(expanded));
      if (expanded) {
        let anchor = row;
        for (const item of nested) {
          const data = item.known || {
            digest: item.descriptor.digest, media_type: item.descriptor.media_type, tags: [], missing: true,
            platform: item.descriptor.platform, artifact_type: item.descriptor.artifact_type,
            annotations: item.descriptor.annotations, pushed_at: null, last_pulled_at: null,
          };
          const shown = { ...data, platform: data.platform || item.descriptor.platform };
          if (item.referrer && !shown.artifact_type) shown.artifact_type = item.descriptor.artifact_type;
          if (item.referrer) shown.annotations = item.descriptor.annotations;
          for (const child of manifestRows(namespace, shown, byDigest, depth + 1, item.referrer ? "referrer" : "child")) {
            anchor.after(child);
            anchor = child;
            extraRows.push(child);
          }
        }
      } else {
        for (const child of extraRows.splice(0)) child.remove();
      }
    });
  }
  const indent = depth ? h("span", { class: "tree-indent", "aria-hidden": "true" }) : null;
  if (indent) indent.style.width = `${(depth - 1) * 22}px`;
  const attached = (revision.referrers || []).map((r) => referrerKind(r)[0]);
  const attachedBadges = () => [...new Set(attached)].map((label) => badge(label, referrerKind((revision.referrers || []).find((r) => referrerKind(r)[0] === label))[1]));
  const childCount = (revision.children || []).length;
  const kindCell = () => [
    kindBadges(via === "referrer" ? { ...revision, subject: revision.subject || "referrer" } : revision),
    childCount && depth === 0 ? h("span", { class: "faint" }, `${childCount} ${childCount === 1 ? "platform" : "platforms"}`) : null,
    depth === 0 ? attachedBadges() : null,
    revision.missing ? h("span", { class: "faint" }, "not stored") : null,
  ];
  row.append(
    h("td", {}, h("div", { class: "tree-cell" }, indent, depth ? h("span", { class: "tree-branch", "aria-hidden": "true" }) : null, toggle,
      h("div", { class: "cell-stack" },
        revision.missing ? h("span", { class: "digest" }, h("span", { class: "text faint", title: revision.digest }, shortDigest(revision.digest)))
                         : digestLink(namespace, revision.digest),
        h("span", { class: "badges show-sm" }, kindCell()),
        (revision.tags || []).length ? h("div", { class: "tags show-sm" }, tagChips(namespace, revision.tags)) : null))),
    h("td", { class: "hide-sm" }, h("span", { class: "badges" }, kindCell())),
    h("td", { class: "hide-sm" }, h("div", { class: "tags" }, tagChips(namespace, revision.tags || []))),
    h("td", { class: "nowrap hide-sm" }, revision.missing ? "" : time(revision.pushed_at, "—")),
    h("td", { class: "nowrap hide-sm" }, revision.missing ? "" : time(revision.last_pulled_at)),
    h("td", { class: "actions" }, revision.missing ? null : h("button", {
      type: "button", class: "icon-action danger", title: "Delete manifest",
      "aria-label": `Delete manifest ${shortDigest(revision.digest)}`,
      onclick: async () => {
        const tags = revision.tags || [];
        const what = tags.length ? `Its tags (${tags.join(", ")}) are removed with it.` : null;
        if (await deleteManifest(namespace, revision.digest, what)) render();
      },
    }, icon("trash"))));
  return [row];
}

function uploadsPanel(namespace, uploads) {
  const rows = uploads.map((upload) => h("tr", { dataset: { uuid: upload.uuid } },
    h("td", {}, h("span", { class: "mono" }, upload.uuid)),
    h("td", { class: "num" }, formatSize(upload.size)),
    h("td", { class: "nowrap hide-sm" }, time(upload.started_at, "—")),
    h("td", { class: "actions" }, h("button", {
      type: "button", class: "button small danger", "aria-label": `Cancel upload ${upload.uuid}`,
      onclick: async () => { if (await cancelUpload(namespace, upload.uuid)) render(); },
    }, icon("x"), "Cancel"))));
  return panel("Uploads in progress", uploads.length,
    rows.length
      ? table([{ label: "Upload" }, { label: "Received", class: "num" }, { label: "Started", class: "hide-sm" }, { label: "", class: "actions" }], rows)
      : h("div", { class: "empty" }, "No upload in progress."));
}

async function viewNamespace(token, namespace, repositories) {
  const repository = repositoryOf(namespace, repositories);
  const [revisionsResult, uploadsResult] = await Promise.allSettled([ext.revisions(namespace), ext.uploads(namespace)]);
  if (token !== renderToken) return;
  if (revisionsResult.status === "rejected") {
    showError(revisionsResult.reason, "list the manifests of this namespace", namespaceCrumbs(namespace, repository));
    return;
  }
  const revisions = revisionsResult.value.revisions;
  const byDigest = new Map(revisions.map((r) => [r.digest, r]));
  const top = revisions.filter((r) => !r.parent && !(r.subject && byDigest.has(r.subject)));
  const rows = top.flatMap((revision) => manifestRows(namespace, revision, byDigest, 0, null));
  const tagCount = revisions.reduce((sum, r) => sum + r.tags.length, 0);
  const total = revisions.length;
  const columns = [{ label: "Manifest" }, { label: "Kind", class: "hide-sm" }, { label: "Tags", class: "hide-sm" }, { label: "Pushed", class: "hide-sm" },
                   { label: "Last pulled", class: "hide-sm" }, { label: "", class: "actions" }];
  const manifestsPanel = panel("Manifests", total,
    rows.length ? table(columns, rows) : h("div", { class: "empty" }, "No manifest in this namespace."),
    rows.length > 8 ? filterBox("Filter by tag or digest", rows, (row) => {
      const revision = byDigest.get(row.dataset.digest);
      return revision ? `${revision.digest} ${revision.tags.join(" ")}` : "";
    }) : null);
  const uploads = uploadsResult.status === "fulfilled" ? uploadsResult.value.uploads : [];
  app.replaceChildren(
    namespaceCrumbs(namespace, repository),
    pageHead(namespaceTitle(namespace, repository), [
      repositoryBadges(repository),
      h("span", {}, `${total} ${total === 1 ? "manifest" : "manifests"} · ${tagCount} ${tagCount === 1 ? "tag" : "tags"}`),
    ], h("div", { class: "pull-command", title: "Image name" },
      h("span", { class: "text" }, `${location.host}/${namespace}`), copyButton(`${location.host}/${namespace}`, "Copy image name"))),
    manifestsPanel,
    uploadsResult.status === "fulfilled" ? uploadsPanel(namespace, uploads) : null);
}

// ------------------------------------------------------------------ view: one manifest

function factRows(pairs) {
  const list = h("dl", { class: "facts" });
  for (const [label, value] of pairs) {
    if (value === null || value === undefined || value === false) continue;
    list.append(h("dt", {}, label), h("dd", {}, value));
  }
  return list;
}

function blobLink(namespace, descriptor, label) {
  return h("a", { href: `/v2/${namespace}/blobs/${descriptor.digest}`, download: descriptor.digest.replace(":", "-"),
                  class: "icon-action", title: label, "aria-label": label }, icon("download"));
}

function annotationsPanel(annotations) {
  const keys = Object.keys(annotations || {}).sort((a, b) => {
    const known = (k) => (ANNOTATION_NAMES[k] ? 0 : 1);
    return known(a) - known(b) || a.localeCompare(b);
  });
  if (!keys.length) return null;
  const rows = keys.map((key) => {
    const value = annotations[key];
    let shown = value;
    if (LINK_ANNOTATIONS.has(key) && /^https?:\/\//i.test(value)) {
      shown = h("a", { href: value, target: "_blank", rel: "noopener noreferrer" }, value);
    } else if (key === "org.opencontainers.image.created" && !Number.isNaN(Date.parse(value))) {
      shown = h("span", { title: value }, new Date(value).toLocaleString());
    }
    return h("tr", {},
      h("td", {}, h("div", { class: "annotation-key" },
        h("span", {}, ANNOTATION_NAMES[key] || key), ANNOTATION_NAMES[key] ? h("span", { class: "raw" }, key) : null)),
      h("td", { class: "value" }, shown));
  });
  return panel("Annotations", keys.length, table([{ label: "Name" }, { label: "Value" }], rows));
}

async function fetchConfig(namespace, descriptor) {
  if (!descriptor || descriptor.size > 1024 * 1024 || !/json/.test(descriptor.mediaType || "")) return null;
  if (descriptor.mediaType === "application/vnd.oci.empty.v1+json") return null;
  try {
    return await (await request(`/v2/${namespace}/blobs/${descriptor.digest}`)).json();
  } catch (error) {
    return null;
  }
}

async function viewManifest(token, namespace, reference, repositories) {
  const repository = repositoryOf(namespace, repositories);
  const isTag = !reference.includes(":");
  let response;
  try {
    // X-Angosd-Browse: looking at a manifest here does not count as a pull (last_pulled_at).
    response = await request(`/v2/${namespace}/manifests/${reference}`,
                             { headers: { Accept: MANIFEST_ACCEPT, "X-Angosd-Browse": "1" } });
  } catch (error) {
    if (token === renderToken) {
      showError(error, "read this manifest", namespaceCrumbs(namespace, repository, isTag ? `:${reference}` : shortDigest(reference)));
    }
    return;
  }
  const text = await response.text();
  const digest = response.headers.get("Docker-Content-Digest") || (isTag ? null : reference);
  const mediaType = (response.headers.get("Content-Type") || "").split(";")[0];
  let manifest = {};
  try { manifest = JSON.parse(text); } catch (error) { /* shown raw below */ }
  const [revisionsResult] = await Promise.allSettled([ext.revisions(namespace)]);
  const revisions = revisionsResult.status === "fulfilled" ? revisionsResult.value.revisions : [];
  const byDigest = new Map(revisions.map((r) => [r.digest, r]));
  const revision = byDigest.get(digest) || {};
  const isIndex = INDEX_TYPES.has(mediaType || manifest.mediaType);
  const config = isIndex ? null : await fetchConfig(namespace, manifest.config);
  if (token !== renderToken) return;

  const tags = revision.tags || (isTag ? [reference] : []);
  const layers = manifest.layers || [];
  const totalSize = new Blob([text]).size + (manifest.config ? manifest.config.size : 0)
    + layers.reduce((sum, layer) => sum + (layer.size || 0), 0);
  const platform = revision.platform || (config && config.os ? { os: config.os, architecture: config.architecture, variant: config.variant } : null);
  const title = [namespaceTitle(namespace, repository), h("span", { class: "ref" }, isTag ? `:${reference}` : `@${shortDigest(reference)}`)];
  const kind = () => (isIndex ? badge("Index", "teal") : manifest.artifactType || manifest.subject
    ? badge(...referrerKind({ artifact_type: manifest.artifactType }))
    : badge("Image", ""));
  const pullName = `${location.host}/${namespace}@${digest}`;

  const tagsBox = h("div", { class: "tags" }, tags.length ? tags.map((tag) => h("span", { class: "tag removable", dataset: { tag } },
    h("a", { href: links.tag(namespace, tag) }, tag),
    h("button", { type: "button", class: "remove", title: `Delete tag ${tag}`, "aria-label": `Delete tag ${tag}`,
      onclick: async () => {
        if (!(await deleteManifest(namespace, tag))) return;
        if (isTag && tag === reference) navigate(links.digest(namespace, digest), true);
        else render();
      } }, icon("x")))) : h("span", { class: "faint" }, "untagged"));

  const summary = panel("Overview", null, factRows([
    ["Digest", digest ? h("span", { class: "digest wrap" }, h("span", { class: "text mono" }, digest), copyButton(digest)) : "—"],
    ["Kind", h("span", { class: "badges" }, kind(), platform ? h("span", { class: "badge outline" }, platformText(platform)) : null)],
    ["Media type", h("span", { class: "mono" }, mediaType || manifest.mediaType || "—")],
    manifest.artifactType ? ["Artifact type", h("span", { class: "mono" }, manifest.artifactType)] : [null, null],
    ["Manifest size", formatSize(new Blob([text]).size)],
    !isIndex ? ["Total size", formatSize(totalSize)] : [null, null],
    ["Tags", tagsBox],
    ["Pushed", revision.pushed_at ? time(revision.pushed_at) : h("span", { class: "faint" }, "—")],
    ["Last pulled", time(revision.last_pulled_at)],
    config && config.created ? ["Image created", h("span", { title: config.created }, new Date(config.created).toLocaleString())] : [null, null],
    revision.parent ? ["Parent index", digestLink(namespace, revision.parent)] : [null, null],
    manifest.subject ? ["Subject", digestLink(namespace, manifest.subject.digest)] : [null, null],
    ["Pull by digest", h("div", { class: "pull-command" }, h("span", { class: "text", title: pullName }, pullName), copyButton(pullName, "Copy pull reference"))],
  ].filter(([label]) => label)));

  const sections = [];
  let configPanel = null;
  if (isIndex) {
    const rows = (manifest.manifests || []).map((child) => {
      const known = byDigest.get(child.digest);
      const attestation = (child.annotations || {})["vnd.docker.reference.type"] === "attestation-manifest";
      return h("tr", { dataset: { digest: child.digest } },
        h("td", {}, attestation ? badge("attestation", "amber") : h("span", { class: "badge outline" }, platformText(child.platform) || "unknown")),
        h("td", {}, known ? digestLink(namespace, child.digest) : h("span", { class: "mono faint", title: child.digest }, shortDigest(child.digest))),
        h("td", { class: "mono hide-sm" }, child.mediaType),
        h("td", { class: "num" }, formatSize(child.size)));
    });
    sections.push(panel("Platforms", rows.length, rows.length
      ? table([{ label: "Platform" }, { label: "Manifest" }, { label: "Media type", class: "hide-sm" }, { label: "Size", class: "num" }], rows)
      : h("div", { class: "empty" }, "This index lists no manifest.")));
  } else {
    const withFiles = layers.some((layer) => layer.annotations && layer.annotations["org.opencontainers.image.title"]);
    const rows = layers.map((layer, position) => h("tr", {},
      h("td", { class: "num faint" }, position + 1),
      withFiles ? h("td", { class: "value" }, (layer.annotations || {})["org.opencontainers.image.title"] || "—") : null,
      h("td", {}, h("span", { class: "digest" }, h("span", { class: "text", title: layer.digest }, shortDigest(layer.digest)), copyButton(layer.digest))),
      h("td", { class: "mono hide-sm" }, layer.mediaType),
      h("td", { class: "num" }, formatSize(layer.size)),
      h("td", { class: "actions" }, blobLink(namespace, layer, "Download layer"))));
    const columns = [{ label: "#", class: "num" }, withFiles ? { label: "File" } : null, { label: "Digest" },
                     { label: "Media type", class: "hide-sm" }, { label: "Size", class: "num" }, { label: "", class: "actions" }].filter(Boolean);
    sections.push(panel(withFiles ? "Files" : "Layers", layers.length,
      rows.length ? table(columns, rows) : h("div", { class: "empty" }, "No layers.")));
    if (manifest.config) {
      configPanel = panel("Config", null, factRows([
        ["Digest", h("span", { class: "digest" }, h("span", { class: "text mono" }, shortDigest(manifest.config.digest)), copyButton(manifest.config.digest), blobLink(namespace, manifest.config, "Download config"))],
        ["Media type", h("span", { class: "mono" }, manifest.config.mediaType)],
        ["Size", formatSize(manifest.config.size)],
        config && config.config && config.config.Entrypoint ? ["Entrypoint", h("span", { class: "mono" }, [].concat(config.config.Entrypoint).join(" "))] : [null, null],
        config && config.config && config.config.Cmd ? ["Command", h("span", { class: "mono" }, [].concat(config.config.Cmd).join(" "))] : [null, null],
        config && config.config && config.config.WorkingDir ? ["Working dir", h("span", { class: "mono" }, config.config.WorkingDir)] : [null, null],
        config && config.config && config.config.User ? ["User", h("span", { class: "mono" }, config.config.User)] : [null, null],
      ].filter(([label]) => label)));
    }
  }
  const referrers = revision.referrers || [];
  if (referrers.length) {
    const rows = referrers.map((r) => {
      const [label, color] = referrerKind(r);
      const created = (r.annotations || {})["org.opencontainers.image.created"];
      return h("tr", { dataset: { digest: r.digest } },
        h("td", {}, badge(label, color)),
        h("td", {}, byDigest.has(r.digest) ? digestLink(namespace, r.digest) : h("span", { class: "mono faint" }, shortDigest(r.digest))),
        h("td", { class: "mono hide-sm value" }, r.artifact_type || r.media_type),
        h("td", { class: "nowrap hide-sm" }, created && !Number.isNaN(Date.parse(created)) ? time(Date.parse(created) / 1000, "—") : h("span", { class: "faint" }, "—")));
    });
    sections.push(panel("Referrers", rows.length,
      table([{ label: "Kind" }, { label: "Manifest" }, { label: "Artifact type", class: "hide-sm" }, { label: "Created", class: "hide-sm" }], rows)));
  }
  const annotations = annotationsPanel(manifest.annotations);
  const danger = digest ? h("section", { class: "panel danger-zone" },
    h("div", { class: "panel-head" }, h("h2", {}, "Delete")),
    h("div", { class: "panel-body" },
      h("p", {}, tags.length ? `Deletes the manifest and its ${tags.length === 1 ? "tag" : "tags"} ${tags.join(", ")}.` : "Deletes the manifest."),
      h("button", { type: "button", class: "button danger", onclick: async () => {
        const what = tags.length ? `Its tags (${tags.join(", ")}) are removed with it.` : null;
        if (await deleteManifest(namespace, digest, what)) navigate(links.namespace(namespace));
      } }, icon("trash"), "Delete manifest"))) : null;

  app.replaceChildren(
    namespaceCrumbs(namespace, repository, isTag ? reference : shortDigest(reference)),
    pageHead(title, [kind(), platform ? h("span", { class: "badge outline" }, platformText(platform)) : null,
      digest ? h("span", { class: "mono muted", title: digest }, shortDigest(digest)) : null]),
    configPanel ? h("div", { class: "grid-2" }, summary, configPanel) : summary,
    h("div", { class: "stack" }, sections, annotations),
    danger);
}

// ------------------------------------------------------------------ render loop

let renderToken = 0;

async function render() {
  const token = ++renderToken;
  const route = parseLocation();
  const slow = setTimeout(() => {
    if (token === renderToken) app.replaceChildren(h("div", { class: "loading" }, h("span", { class: "spinner" }), "Loading…"));
  }, 150);
  try {
    if (route.view === "repositories") {
      await viewRepositories(token);
      return;
    }
    let repositories = [];
    try {
      repositories = (await ext.repositories()).repositories;
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 403) throw error;
    }
    repositoryNames.clear();
    for (const repository of repositories) repositoryNames.add(repository.name);
    if (route.view === "path") {
      if (repositoryNames.has(route.name)) await viewRepository(token, route.name, repositories);
      else await viewNamespace(token, route.name, repositories);
    } else if (route.view === "namespace") {
      await viewNamespace(token, route.namespace, repositories);
    } else {
      await viewManifest(token, route.namespace, route.reference, repositories);
    }
  } catch (error) {
    if (token === renderToken) showError(error, "show this page");
  } finally {
    clearTimeout(slow);
    document.title = titleFor(route);
  }
}

let registryName = "Registry";

function titleFor(route) {
  const page = route.view === "repositories" ? "" : route.view === "path" ? route.name
    : route.view === "namespace" ? route.namespace
    : `${route.namespace}${route.reference.includes(":") ? "@" + shortDigest(route.reference) : ":" + route.reference}`;
  return page ? `${page} · ${registryName}` : registryName;
}

// ------------------------------------------------------------------ theme

function currentTheme() {
  const chosen = document.documentElement.dataset.theme;
  if (chosen === "light" || chosen === "dark") return chosen;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function paintThemeToggle() {
  const button = document.getElementById("theme-toggle");
  const next = currentTheme() === "dark" ? "light" : "dark";
  button.replaceChildren(icon(next === "dark" ? "moon" : "sun"));
  button.setAttribute("aria-label", `Switch to the ${next} theme`);
  button.title = `Switch to the ${next} theme`;
  button.dataset.theme = currentTheme();
}

document.getElementById("theme-toggle").addEventListener("click", () => {
  const next = currentTheme() === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  try { localStorage.setItem("angosd-theme", next); } catch (error) { /* not persisted */ }
  paintThemeToggle();
});
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", paintThemeToggle);
paintThemeToggle();

// ------------------------------------------------------------------ start

async function loadConfig() {
  try {
    const config = await getJSON("/_ui/config");
    if (config && typeof config.name === "string" && config.name) {
      registryName = config.name;
      document.getElementById("brand-name").textContent = config.name;
      document.title = titleFor(parseLocation());
    }
  } catch (error) { /* the default name stays */ }
}

loadConfig();
render();
