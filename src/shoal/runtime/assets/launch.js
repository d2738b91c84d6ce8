// Shoal: the first script of every page of an app. It takes the launch fragment
// (#shoal=SECRET...) out of the address before the app's own scripts run, so that a
// router writing a fragment of its own cannot lose it, and keeps it in sessionStorage
// for the API module, which trusts it no more than a fragment: only once the bridge
// has taken its secret.
if (/[#&]shoal=/.test(location.hash)) {
  sessionStorage.setItem("shoal.launch", location.hash);
  history.replaceState(history.state, "", location.pathname + location.search);
}
