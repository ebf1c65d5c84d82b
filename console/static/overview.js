// The overview, live: Server-Sent Events from /machines/ID/live (each a JSON overview), or,
// where EventSource is missing or keeps failing, a fetch of overview.json every 2 s.
// Values are written with textContent only: a drink's name is text, never HTML.
(function () {
  var root = document.getElementById("overview");
  if (!root) return;

  function get(values, path) {
    return path.split(".").reduce(function (v, k) { return v == null ? v : v[k]; }, values);
  }

  function rows(list, build) {
    var frag = document.createDocumentFragment();
    list.forEach(function (item) { frag.appendChild(build(item)); });
    return frag;
  }

  function cell(tag, text, cls) {
    var e = document.createElement(tag);
    e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function show(values) {
    root.querySelectorAll("[data-field]").forEach(function (e) {
      var name = e.getAttribute("data-field");
      if (name === "live") return;
      var v = get(values, name);
      if (name.indexOf("order.") === 0 && !values.order) v = name === "order.order_id" ? "none" : "-";
      e.textContent = v == null ? "-" : String(v);
    });
    var beats = root.querySelector("[data-list=heartbeats]");
    beats.replaceChildren(rows(values.heartbeats || [], function (b) {
      var tr = document.createElement("tr");
      tr.className = b.ok ? "ok" : "bad";
      tr.appendChild(cell("td", b.service));
      tr.appendChild(cell("td", b.age_text));
      return tr;
    }));
    var alerts = root.querySelector("[data-list=alerts]");
    var list = values.alerts || [];
    alerts.replaceChildren(list.length ? rows(list, alertRow) : cell("li", "None", "muted"));
  }

  // An open alert and its Acknowledge form, as the page renders it (the CSRF token is the page's).
  function alertRow(a) {
    var li = cell("li", "", "alert");
    li.appendChild(cell("span", a.text));
    var form = document.createElement("form");
    form.className = "ack";
    form.method = "post";
    form.action = root.getAttribute("data-alerts") + encodeURIComponent(a.id) + "/acknowledge";
    var csrf = document.createElement("input");
    csrf.type = "hidden";
    csrf.name = "csrf";
    csrf.value = root.getAttribute("data-csrf");
    form.appendChild(csrf);
    var button = cell("button", "Acknowledge", "secondary");
    button.type = "submit";
    button.setAttribute("data-testid", "ack-" + a.id);
    form.appendChild(button);
    li.appendChild(form);
    return li;
  }

  var status = root.querySelector("[data-field=live]");
  var failures = 0;

  function poll() {
    status.textContent = "every 2 s";
    fetch(root.getAttribute("data-json"), {credentials: "same-origin"})
      .then(function (r) { if (r.redirected || !r.ok) throw new Error(r.status); return r.json(); })
      .then(show)
      .catch(function () { status.textContent = "disconnected"; })
      .finally(function () { setTimeout(poll, 2000); });
  }

  if (!window.EventSource) { poll(); return; }
  var source = new EventSource(root.getAttribute("data-live"));
  source.onopen = function () { status.textContent = "connected"; };
  source.onmessage = function (event) {
    failures = 0;
    status.textContent = "connected";
    show(JSON.parse(event.data));
  };
  source.onerror = function () {
    failures += 1;
    status.textContent = "reconnecting";
    if (failures >= 5) { source.close(); poll(); }
  };
})();
