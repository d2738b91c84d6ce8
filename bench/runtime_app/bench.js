import { fs, invoke } from "shoal:api";
import { firstPaint } from "./paint.js";

// Round trips and a 64 MiB read. Only where the page is cross-origin isolated: elsewhere
// the browser coarsens performance.now() to 100 us.
async function measureCalls() {
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const params = new URLSearchParams(location.search);
  const calls = Number(params.get("calls") || 2000);
  for (let i = 0; i < 200; i++) await invoke("noop");  // warm-up
  const samples = [];
  for (let i = 0; i < calls; i++) {
    const start = performance.now();
    await invoke("noop");
    samples.push(performance.now() - start);
  }
  samples.sort((a, b) => a - b);
  const readStart = performance.now();
  const big = await fs.readFile("big.bin");
  const readSeconds = (performance.now() - readStart) / 1000;
  return {
    round_trip_p50_ms: samples[Math.floor(samples.length * 0.5)],
    round_trip_p99_ms: samples[Math.floor(samples.length * 0.99)],
    read_bytes: big.length,
    read_mb_per_s: big.length / 1e6 / readSeconds,
  };
}

const paint = await firstPaint();
// The harness measures memory once this file exists, as for the bare window; then the
// bench runs. Its write is also the page's first bridge call.
await fs.writeFile("painted.json", "{}");
const firstCallEpoch = performance.timeOrigin + performance.now();
await fs.writeFile("bench.json", JSON.stringify({
  first_paint_epoch_ms: performance.timeOrigin + paint.startTime,
  first_call_epoch_ms: firstCallEpoch,
  isolated: crossOriginIsolated,
  ...(crossOriginIsolated ? await measureCalls() : {}),
}));
document.body.dataset.done = "true";
