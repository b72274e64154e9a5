// The sign-in page: e-mail and password, POST /v1/session. The answers of a wrong e-mail
// and of a wrong password are the same; after too many failures the server answers 429.
import { api, ApiError } from './api.js';
import { h } from './dom.js';

function message(error) {
  if (error instanceof ApiError && error.status === 401) return 'Wrong e-mail or password.';
  if (error instanceof ApiError && error.status === 429) {
    const minutes = Math.max(1, Math.ceil((error.retryAfter || 60) / 60));
    return `Too many failed sign-ins. Try again in ${minutes} minute${minutes === 1 ? '' : 's'}.`;
  }
  if (error instanceof ApiError && error.status === 422) return 'Enter an e-mail and a password.';
  return 'The console cannot reach Nudge right now. Try again shortly.';
}

export function renderLogin(root, onSignedIn) {
  const error = h('p', { class: 'error', role: 'alert', id: 'login-error' });
  const email = h('input', {
    id: 'login-email', name: 'email', type: 'email', autocomplete: 'username', required: true,
  });
  const password = h('input', {
    id: 'login-password', name: 'password', type: 'password',
    autocomplete: 'current-password', required: true,
  });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h(
    'form',
    { class: 'card login', 'aria-labelledby': 'login-title', novalidate: true },
    h('h1', { id: 'login-title' }, 'Sign in to Nudge'),
    h('label', { for: 'login-email' }, 'E-mail'),
    email,
    h('label', { for: 'login-password' }, 'Password'),
    password,
    button,
    error,
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    button.disabled = true;
    try {
      const session = await api('POST', '/v1/session', {
        email: email.value,
        password: password.value,
      });
      onSignedIn(session);
    } catch (failure) {
      error.textContent = message(failure);
      password.value = '';
      password.focus();
    } finally {
      button.disabled = false;
    }
  });
  root.replaceChildren(h('main', { class: 'center' }, form));
  email.focus();
}
