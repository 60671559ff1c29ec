// Keeps the reviewer's name in this browser's localStorage (survives reloads and new tabs, not other browsers).
// data = {name, forget}: a typed name is stored; a name the reviewer cleared is forgotten; with no name yet the
// stored one is sent back once as the "stored" state (the page then fills the name box with it).
const KEY = "slidelens.reviewer";

export default function (component) {
  const { data, setStateValue } = component;
  let stored = null;
  try {
    stored = window.localStorage.getItem(KEY);
  } catch (e) {
    return; // storage blocked (private mode, policy): the name is kept for the session only
  }
  const name = (data && data.name) || "";
  if (name) {
    if (name !== stored) window.localStorage.setItem(KEY, name);
  } else if (data && data.forget) {
    if (stored !== null) window.localStorage.removeItem(KEY);
  } else if (stored) {
    setStateValue("stored", stored);
  }
}
