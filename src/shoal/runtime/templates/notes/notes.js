// The text edits of the notes, kept apart from the page so that notes.test.js can check them.

/** The one edit that turns `before` into `after`: from `index`, `remove` characters out
 * and `insert` in (the common start and end are kept). Indexes count as String.slice does;
 * a pair of UTF-16 halves is never split. */
export function diff(before, after) {
  let start = 0;
  const shortest = Math.min(before.length, after.length);
  while (start < shortest && before[start] === after[start]) start++;
  let end = 0;
  while (end < shortest - start &&
         before[before.length - 1 - end] === after[after.length - 1 - end]) end++;
  if (start > 0 && isHighHalf(before.charCodeAt(start - 1))) start--;
  if (end > 0 && isLowHalf(before.charCodeAt(before.length - end))) end--;
  return { index: start, remove: before.length - start - end,
           insert: after.slice(start, after.length - end) };
}

const isHighHalf = (code) => code >= 0xd800 && code <= 0xdbff;
const isLowHalf = (code) => code >= 0xdc00 && code <= 0xdfff;

/** Where a caret at `position` in `before` is once `change` (from diff) is made elsewhere. */
export function moveCaret(position, change) {
  if (position <= change.index) return position;
  if (position >= change.index + change.remove) {
    return position - change.remove + change.insert.length;
  }
  return change.index + change.insert.length;
}
