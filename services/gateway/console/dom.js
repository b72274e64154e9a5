// DOM helpers of the console. Everything a contact or a manager typed reaches the page as a
// text node or through textContent, never as markup: h() has no way to set innerHTML, and
// attribute names always come from our own code.

/**
 * A new element. props: `class`, `text` (textContent), `on<event>` (listener), anything else
 * an attribute (true: present, false/null/undefined: absent). Children: nodes or text.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'text') el.textContent = String(value);
    else if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const numbers = new Intl.NumberFormat(undefined);
const dates = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

export function formatNumber(value) {
  return numbers.format(value);
}

export function formatDate(value) {
  if (!value) return '';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? '' : dates.format(date);
}

/**
 * "More" under a paged list, and where its failure is said: `fetchPage(token)` answers the
 * next page (`{ next_page_token }` and its rows), `append(page)` shows its rows. Hidden once
 * there is no next page. Returns [button, error] to place after the list.
 */
export function moreButton(id, label, firstToken, fetchPage, append) {
  const button = h('button', { type: 'button', id, hidden: !firstToken }, label);
  const error = h('p', { class: 'error', role: 'alert' });
  let token = firstToken;
  button.addEventListener('click', async () => {
    button.disabled = true;
    error.textContent = '';
    try {
      const page = await fetchPage(token);
      append(page);
      token = page.next_page_token;
      button.hidden = !token;
    } catch (failure) {
      error.textContent = failure.message;
    } finally {
      button.disabled = false;
    }
  });
  return [button, error];
}
