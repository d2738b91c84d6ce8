// What the chat shows, kept apart from the page so that chat.test.js can check it.

/** One line of the log for a message received. Peer ids stay whole: they get copied. */
export function receivedLine(message) {
  return `${message.from} (${message.path}): ${message.text()}`;
}

/** One line of the log for a message this node sent. */
export function sentLine(to, delivery, text) {
  return `me → ${to} (${delivery.path}, ${delivery.ms} ms): ${text}`;
}

/** One line of the log for a message that did not arrive. */
export function failedLine(error) {
  return `not delivered: ${error.code} ${error.message}`;
}

/** What the pairing line says as it goes. */
export function pairingLine(step, value) {
  if (step === "code") return `Tell the other side this code: ${value}`;
  if (step === "paired") return `Paired with ${value}: their id is filled in below.`;
  return `Not paired: ${value.code} ${value.message}`;
}
