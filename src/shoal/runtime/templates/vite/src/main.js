import "./style.css";

// Shoal's API is no npm package: the page's import map resolves "shoal:api", both under
// shoal dev and in the built app. Through a variable, Vite leaves the import to it.
const shoal = "shoal:api";

async function main() {
  const { fs, invoke } = await import(/* @vite-ignore */ shoal);
  // A function of app.py, granted in shoal.toml under permissions.invoke.
  document.querySelector("#greeting").textContent = await invoke("greet", ["world"]);
  // Relative paths live in this app's own data folder.
  let visits = 0;
  try {
    visits = Number(await fs.readFile("visits.txt", "utf8"));
  } catch (error) {
    if (error.code !== "ENOENT") throw error;
  }
  visits += 1;
  await fs.writeFile("visits.txt", String(visits));
  document.querySelector("#visits").textContent = `Opened ${visits} time(s).`;
  document.body.dataset.ready = "true";
}

main();
