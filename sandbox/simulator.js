// The payment simulator of the local Midtrans sandbox (sandbox/simulator.html): Pay / Deny
// buttons, the fault form, and a refresh of the pending list every 2 s.
"use strict";
const list = document.getElementById("list");
const msg = document.getElementById("msg");

async function refresh() {
  try {
    const r = await fetch("/simulator?part=list");
    if (r.ok) list.innerHTML = await r.text();
  } catch (e) { /* sandbox restarting: try again on the next tick */ }
}

list.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-act]");
  if (!b) return;
  b.disabled = true;
  const r = await fetch("/simulator/" + b.dataset.act + "/" + encodeURIComponent(b.dataset.order),
                        {method: "POST"});
  msg.textContent = r.ok ? "" : (await r.json()).status_message;
  refresh();
});

document.getElementById("faults").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const data = {};
  for (const input of ev.target.querySelectorAll("input")) data[input.name] = Number(input.value);
  const r = await fetch("/simulator/faults", {method: "POST", body: JSON.stringify(data),
                        headers: {"Content-Type": "application/json"}});
  const answer = await r.json();
  msg.textContent = r.ok ? "faults applied" : answer.validation_messages.join("; ");
});

setInterval(refresh, 2000);
