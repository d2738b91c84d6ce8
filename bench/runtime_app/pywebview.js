// The bench page's calls on pywebview's own bridge (the baseline window's js_api), for
// comparison: the same reports as bench.js makes through Shoal.
import { firstPaint } from "./paint.js";

await new Promise((resolve) => {
  if (window.pywebview?.api?.write_file) resolve();
  else window.addEventListener("pywebviewready", resolve, { once: true });
});
const api = window.pywebview.api;
const paint = await firstPaint();
await api.write_file("painted.json", "{}");
const firstCallEpoch = performance.timeOrigin + performance.now();
for (let i = 0; i < 50; i++) await api.noop();  // warm-up
const samples = [];
for (let i = 0; i < 500; i++) {
  const start = performance.now();
  await api.noop();
  samples.push(performance.now() - start);
}
samples.sort((a, b) => a - b);
await api.write_file("bench.json", JSON.stringify({
  first_paint_epoch_ms: performance.timeOrigin + paint.startTime,
  first_call_epoch_ms: firstCallEpoch,
  round_trip_p50_ms: samples[250],
  round_trip_p99_ms: samples[495],
}));
