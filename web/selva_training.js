// SelVA training UI: a "skip running experiment" button on the LoRA Scheduler node.
// ComfyUI runs one prompt at a time, so a node queued behind a running sweep would only run
// after it; the button calls the pack's HTTP route instead, which the running sweep watches.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

async function skipRunningExperiment() {
  const res = await api.fetchApi("/selva/skip", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({}),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    alert(`SelVA: ${data.error || res.statusText}`);
  }
}

app.registerExtension({
  name: "selva.training",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "SelvaLoraScheduler") return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      // not serialised: saved workflows keep their widget values by position
      this.addWidget("button", "skip running experiment", null, skipRunningExperiment, { serialize: false });
      return result;
    };
  },
});
