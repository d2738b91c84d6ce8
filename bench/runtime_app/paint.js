// The page's first paint, as the browser recorded it.
export function firstPaint() {
  return new Promise((resolve) => {
    const found = () => performance.getEntriesByType("paint")[0];
    if (found()) return resolve(found());
    new PerformanceObserver((list, observer) => {
      observer.disconnect();
      resolve(list.getEntries()[0]);
    }).observe({ type: "paint", buffered: true });
  });
}
