// What the chat shows, kept apart from the page so that chat.test.js can check it.

/** Who wrote a post: "me", the member's name with the start of their id, or the id's
 * start. The whole id is in the line's tooltip. */
export function authorLabel(author, { me, names }) {
  if (author === me) return "me";
  const name = names.get(author);
  return name ? `${name} (${author.slice(0, 8)})` : author.slice(0, 12);
}

/** A post's time as HH:MM, in local time. */
export function clock(seconds) {
  const when = new Date(seconds * 1000);
  return `${String(when.getHours()).padStart(2, "0")}:${String(when.getMinutes()).padStart(2, "0")}`;
}

/** One line of the log: when, who, what. */
export function postLine(post, who) {
  return `${clock(post.time)} ${authorLabel(post.author, who)}: ${post.text()}`;
}

/** What the status line says when something failed. */
export function failedLine(what, error) {
  return `${what} failed: ${error.code} ${error.message}`;
}

/** Why a pasted invite cannot be one, or null if it may be. */
export function inviteProblem(text) {
  const invite = text.trim();
  if (!invite) return "paste the invite you were given";
  if (!invite.startsWith("shoal-group:")) return "an invite starts with shoal-group:";
  return null;
}
