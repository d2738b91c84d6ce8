import { defineConfig } from "vite";

export default defineConfig({
  // Where [dev] url in shoal.toml looks for it.
  server: { host: "127.0.0.1", port: 5173, strictPort: true },
  build: { outDir: "dist" },
});
