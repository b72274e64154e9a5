// The Settings page: sending status (shown only: lifting a suspension is an operator's act),
// the sender's name and default Reply-To, consent and the frequency cap, sending domains with
// their DKIM records, and, for the owner, the API keys and the team (add, change a role,
// remove). Everything goes through the public /v1 API (api.js); a viewer sees the values with
// nothing to change, an owner-only part is not even asked for by others (the gateway refuses
// it anyway). Every value is rendered as text.
import { api, ApiError } from './api.js';
import { formatDate, formatNumber, h } from './dom.js';

function section(id, title, ...content) {
  return h(
    'section',
    { class: 'card settings', id, 'aria-labelledby': `${id}-title` },
    h('h2', { id: `${id}-title` }, title),
    ...content,
  );
}

function failed(error) {
  return h('p', { class: 'error', role: 'alert' }, `Could not load this: ${error.message}`);
}

function pending() {
  return h('p', { class: 'muted' }, 'Loading…');
}

/** A labelled input with the place its field error goes (data-error-for = the API's field). */
function field(id, label, input, apiField) {
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, label),
    input,
    h('p', { class: 'field-error error', 'data-error-for': apiField, id: `${id}-error` }),
  );
}

function checkbox(id, label, checked, disabled) {
  const input = h('input', { id, type: 'checkbox', checked, disabled });
  return { input, row: h('div', { class: 'field check' }, input, h('label', { for: id }, label)) };
}

/**
 * Submits `form` with `send()`: clears the old errors, shows the problem's detail in the
 * form's alert and each field error next to its field, and keeps the button disabled while
 * the request runs (no double submission).
 */
function handle(form, alert, send) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    alert.textContent = '';
    alert.className = 'form-status';
    for (const slot of form.querySelectorAll('.field-error')) slot.textContent = '';
    const buttons = form.querySelectorAll('button[type="submit"]');
    for (const b of buttons) b.disabled = true;
    try {
      const done = await send();
      if (done) {
        alert.textContent = done;
        alert.className = 'form-status ok';
      }
    } catch (error) {
      alert.className = 'form-status error';
      alert.textContent = error.message;
      const errors = (error instanceof ApiError && error.problem && error.problem.errors) || [];
      for (const { field: name, message } of errors) {
        const slot = form.querySelector(`[data-error-for="${CSS.escape(String(name))}"]`);
        if (slot) slot.textContent = message;
      }
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  });
}

function statusLine(id) {
  return h('p', { class: 'form-status', role: 'status', id });
}

// ------------------------------------------------------------------ sending status

function renderSending(target, status) {
  const lines = status.suspended
    ? [
      h('p', { class: 'status-line suspended', id: 'settings-sending-state' }, 'Sending is suspended'),
      h('p', { class: 'reason', id: 'settings-sending-reason' }, status.reason),
      status.suspended_at ? h('p', { class: 'meta' }, `Since ${formatDate(status.suspended_at)}`) : null,
      h('p', { class: 'muted' }, 'An operator of Nudge lifts a suspension once the cause is dealt with.'),
    ]
    : [h('p', { class: 'status-line ok', id: 'settings-sending-state' }, 'Sending is active')];
  const hours = Math.round(status.window_seconds / 3600);
  target.replaceChildren(
    ...lines,
    h(
      'p',
      { class: 'meta' },
      `Last ${hours} h: ${formatNumber(status.window_sent)} sent, `
        + `${formatNumber(status.window_hard_bounces)} hard bounces, `
        + `${formatNumber(status.window_complaints)} complaints`,
    ),
  );
}

// ------------------------------------------------------------------ workspace settings

function renderWorkspace(target, settings, canEdit) {
  const name = h('input', {
    id: 'sender-name', type: 'text', value: settings.name, maxlength: 200, required: true,
    disabled: !canEdit,
  });
  const consent = checkbox(
    'consent-required', 'Send campaigns only to contacts who consented',
    settings.consent_required_for_campaigns, !canEdit,
  );
  const doubleOptIn = checkbox(
    'double-opt-in', 'Consent counts once confirmed from a mail’s link (double opt-in)',
    settings.double_opt_in, !canEdit,
  );
  const alert = statusLine('workspace-status');
  const form = h(
    'form',
    { id: 'workspace-form', class: 'settings-form', novalidate: true },
    field('sender-name', 'Sender name (the From name of every mail)', name, 'name'),
    consent.row,
    doubleOptIn.row,
    canEdit ? h('button', { type: 'submit', class: 'primary', id: 'workspace-save' }, 'Save') : null,
    alert,
  );
  handle(form, alert, async () => {
    const saved = await api('PATCH', '/v1/workspace/settings', {
      name: name.value,
      consent_required_for_campaigns: consent.input.checked,
      double_opt_in: doubleOptIn.input.checked,
    });
    name.value = saved.name;
    consent.input.checked = saved.consent_required_for_campaigns;
    doubleOptIn.input.checked = saved.double_opt_in;
    const workspace = document.getElementById('workspace-name');
    if (workspace) workspace.textContent = saved.name;
    return 'Saved.';
  });
  target.replaceChildren(form);
}

function renderCap(target, settings, canEdit) {
  const messages = h('input', {
    id: 'cap-messages', type: 'number', min: 1, step: 1, inputmode: 'numeric',
    value: settings.frequency_cap_messages, disabled: !canEdit,
  });
  const days = h('input', {
    id: 'cap-days', type: 'number', min: 1, step: 1, inputmode: 'numeric',
    value: settings.frequency_cap_days, disabled: !canEdit,
  });
  const alert = statusLine('cap-status');
  const form = h(
    'form',
    { id: 'cap-form', class: 'settings-form', novalidate: true },
    h('p', { class: 'muted' }, 'Each contact gets at most this many campaign mails in this many days.'),
    h(
      'div',
      { class: 'pair' },
      field('cap-messages', 'Messages', messages, 'frequency_cap_messages'),
      field('cap-days', 'Days', days, 'frequency_cap_days'),
    ),
    canEdit ? h('button', { type: 'submit', class: 'primary', id: 'cap-save' }, 'Save') : null,
    alert,
  );
  // Sent as numbers when they are numbers; anything else as typed, for the server to name.
  const value = (input) => (input.value.trim() !== '' && Number.isFinite(Number(input.value))
    ? Number(input.value) : input.value);
  handle(form, alert, async () => {
    const saved = await api('PATCH', '/v1/campaign-settings', {
      frequency_cap_messages: value(messages),
      frequency_cap_days: value(days),
    });
    messages.value = saved.frequency_cap_messages;
    days.value = saved.frequency_cap_days;
    return 'Saved.';
  });
  target.replaceChildren(form);
}

// The workspace's default Reply-To: one of its campaign settings (PATCH /v1/campaign-settings),
// shown beside the sender name since both say who a mail is from and where answers go.
function renderReplyTo(target, settings, canEdit) {
  const address = h('input', {
    id: 'default-reply-to', type: 'email', maxlength: 320, value: settings.default_reply_to,
    placeholder: 'replies@shop.example', disabled: !canEdit,
  });
  const alert = statusLine('reply-to-status');
  const form = h(
    'form',
    { id: 'reply-to-form', class: 'settings-form', novalidate: true },
    field('default-reply-to', 'Default Reply-To', address, 'default_reply_to'),
    h('p', { class: 'muted' }, 'Replies go to the Reply-To address a campaign names; '
      + 'a campaign that names none uses this one (empty: none).'),
    canEdit ? h('button', { type: 'submit', class: 'primary', id: 'reply-to-save' }, 'Save') : null,
    alert,
  );
  handle(form, alert, async () => {
    const saved = await api('PATCH', '/v1/campaign-settings', { default_reply_to: address.value.trim() });
    address.value = saved.default_reply_to;
    return 'Saved.';
  });
  target.replaceChildren(form);
}

// ------------------------------------------------------------------ DKIM

function renderDkim(target, list, canEdit) {
  const rows = list.keys.length
    ? h(
      'ul',
      { class: 'rows', id: 'dkim-keys' },
      list.keys.map((key) => {
        const alert = statusLine(`dkim-${key.domain}-status`);
        return h(
          'li',
          { class: 'dkim-key', 'data-domain': key.domain },
          h('p', { class: 'row-title' }, key.domain),
          h('p', { class: 'meta' }, `Selector ${key.selector}`),
          h('p', { class: 'muted' }, 'Publish this TXT record in the domain’s DNS:'),
          h('p', { class: 'dns-name' }, h('code', {}, key.dns_record_name)),
          h('p', { class: 'dns-value' }, h('code', {}, key.dns_record_value)),
          canEdit
            ? h('button', {
              type: 'button',
              class: 'danger',
              onclick: async (event) => {
                event.target.disabled = true;
                try {
                  await api('DELETE', `/v1/dkim-keys/${encodeURIComponent(key.domain)}`);
                  reloadDkim(target, canEdit);
                } catch (error) {
                  alert.textContent = error.message;
                  alert.className = 'form-status error';
                  event.target.disabled = false;
                }
              },
            }, `Delete the key of ${key.domain}`)
            : null,
          alert,
        );
      }),
    )
    : h('p', { class: 'muted' }, 'No sending domain has a DKIM key: mail goes unsigned.');
  if (!canEdit) {
    target.replaceChildren(rows);
    return;
  }
  const domain = h('input', { id: 'dkim-domain', type: 'text', placeholder: 'shop.example', required: true });
  const selector = h('input', { id: 'dkim-selector', type: 'text', value: 'nudge', required: true });
  const alert = statusLine('dkim-status');
  const form = h(
    'form',
    { id: 'dkim-form', class: 'settings-form', novalidate: true },
    h('h3', {}, 'Add a sending domain'),
    h(
      'div',
      { class: 'pair' },
      field('dkim-domain', 'Domain', domain, 'domain'),
      field('dkim-selector', 'Selector', selector, 'selector'),
    ),
    h('button', { type: 'submit', class: 'primary', id: 'dkim-create' }, 'Create a DKIM key'),
    alert,
  );
  handle(form, alert, async () => {
    const name = domain.value.trim();
    if (!name) throw new ApiError(422, { detail: 'Enter a domain.', errors: [{ field: 'domain', message: 'required' }] });
    await api('PUT', `/v1/dkim-keys/${encodeURIComponent(name)}`, { selector: selector.value.trim() });
    reloadDkim(target, canEdit);
    return '';
  });
  target.replaceChildren(rows, form);
}

function reloadDkim(target, canEdit) {
  api('GET', '/v1/dkim-keys')
    .then((list) => renderDkim(target, list, canEdit))
    .catch((error) => target.replaceChildren(failed(error)));
}

// ------------------------------------------------------------------ API keys (owner)

function keyState(key) {
  if (key.revoked_at) return `revoked ${formatDate(key.revoked_at)}`;
  if (key.expires_at) return `replaced; works until ${formatDate(key.expires_at)}`;
  return key.last_used_at ? `last used ${formatDate(key.last_used_at)}` : 'never used';
}

function showSecret(slot, title, secret) {
  slot.replaceChildren(
    h(
      'div',
      { class: 'secret', role: 'status' },
      h('p', { class: 'row-title' }, title),
      h('p', {}, h('code', { id: 'new-secret' }, secret)),
      h('p', { class: 'muted' }, 'Copy it now: it is shown only this once.'),
      h('button', { type: 'button', onclick: () => slot.replaceChildren() }, 'I have copied it'),
    ),
  );
}

function renderKeys(target, list) {
  const secret = h('div', { id: 'secret-slot' });
  const reload = () => api('GET', '/v1/api-keys')
    .then((fresh) => renderKeys(target, fresh))
    .catch((error) => target.replaceChildren(failed(error)));
  const action = (path, after) => async (event) => {
    const button = event.target;
    button.disabled = true;
    const alert = button.closest('li').querySelector('.form-status');
    try {
      const answer = await api('POST', path);
      await reload();
      if (after) after(answer);
    } catch (error) {
      alert.textContent = error.message;
      alert.className = 'form-status error';
      button.disabled = false;
    }
  };
  const rows = h(
    'ul',
    { class: 'rows', id: 'api-keys' },
    list.keys.map((key) => h(
      'li',
      { class: 'api-key', 'data-key-id': key.key_id },
      h('p', { class: 'row-title' }, key.name),
      h('p', { class: 'meta' }, `nk_${key.key_id}… · created ${formatDate(key.created_at)} · ${keyState(key)}`),
      key.revoked_at || key.expires_at
        ? null
        : h(
          'div',
          { class: 'actions' },
          h('button', {
            type: 'button',
            class: 'rotate',
            onclick: action(`/v1/api-keys/${key.key_id}:rotate`, (answer) => {
              const slot = document.getElementById('secret-slot');
              if (slot) showSecret(slot, `New key for “${key.name}” (the old one works 24 h more)`, answer.api_key);
            }),
          }, 'Rotate'),
          h('button', {
            type: 'button',
            class: 'danger revoke',
            onclick: action(`/v1/api-keys/${key.key_id}:revoke`, () => {
              const done = document.getElementById('key-status');
              if (done) {
                done.textContent = `Revoked “${key.name}”: it no longer works.`;
                done.className = 'form-status ok';
              }
            }),
          }, 'Revoke'),
        ),
      statusLine(`key-${key.key_id}-status`),
    )),
  );
  const name = h('input', { id: 'key-name', type: 'text', maxlength: 100, required: true });
  const alert = statusLine('key-status');
  const form = h(
    'form',
    { id: 'key-form', class: 'settings-form', novalidate: true },
    h('h3', {}, 'Create an API key'),
    field('key-name', 'What it is for', name, 'name'),
    h('button', { type: 'submit', class: 'primary', id: 'key-create' }, 'Create the key'),
    alert,
  );
  handle(form, alert, async () => {
    const made = await api('POST', '/v1/api-keys', { name: name.value });
    await reload();
    const slot = document.getElementById('secret-slot');
    if (slot) showSecret(slot, `Key “${made.key.name}”`, made.api_key);
    return '';
  });
  target.replaceChildren(secret, rows, form);
}

// ------------------------------------------------------------------ team (owner)

const ROLE_CHOICES = [
  ['viewer', 'Viewer: reads everything, changes nothing'],
  ['manager', 'Manager: runs campaigns and automations'],
  ['owner', 'Owner: also the team and the API keys'],
];

function roleOptions(selected) {
  return ROLE_CHOICES.map(([value, label]) => h('option', { value, selected: value === selected }, label));
}

/** A team member's role, changed as soon as another is picked (back to the stored one on refusal). */
function roleSelect(m, alert, reload) {
  const select = h('select', {
    class: 'manager-role', id: `manager-${m.id}-role`, 'aria-label': `Role of ${m.email}`,
  }, roleOptions(m.role));
  select.addEventListener('change', async () => {
    select.disabled = true;
    alert.textContent = '';
    alert.className = 'form-status';
    try {
      await api('PATCH', `/v1/managers/${encodeURIComponent(m.id)}`, { role: select.value });
      await reload();
    } catch (error) {
      alert.textContent = error.message;
      alert.className = 'form-status error';
      select.value = m.role;
      select.disabled = false;
    }
  });
  return select;
}

function renderTeam(target, list, me) {
  const reload = () => api('GET', '/v1/managers')
    .then((fresh) => renderTeam(target, fresh, me))
    .catch((error) => target.replaceChildren(failed(error)));
  const rows = h(
    'ul',
    { class: 'rows', id: 'team' },
    list.managers.map((m) => {
      const alert = statusLine(`manager-${m.id}-status`);
      return h(
        'li',
        { class: 'manager', 'data-manager-id': m.id },
        h('p', { class: 'row-title manager-email' }, m.email),
        h('p', { class: 'meta' }, `${m.role}${m.id === me.id ? ' · you' : ''}`
          + (m.created_at ? ` · since ${formatDate(m.created_at)}` : '')),
        m.id === me.id ? null : roleSelect(m, alert, reload),
        m.id === me.id
          ? null
          : h('button', {
            type: 'button',
            class: 'danger remove',
            onclick: async (event) => {
              event.target.disabled = true;
              try {
                await api('DELETE', `/v1/managers/${encodeURIComponent(m.id)}`);
                await reload();
              } catch (error) {
                alert.textContent = error.message;
                alert.className = 'form-status error';
                event.target.disabled = false;
              }
            },
          }, 'Remove'),
        alert,
      );
    }),
  );
  const email = h('input', { id: 'manager-new-email', type: 'email', maxlength: 320, required: true });
  const password = h('input', {
    id: 'manager-new-password', type: 'password', minlength: 12, autocomplete: 'new-password', required: true,
  });
  const role = h('select', { id: 'manager-new-role' }, roleOptions('viewer'));
  const alert = statusLine('manager-status');
  const form = h(
    'form',
    { id: 'manager-form', class: 'settings-form', novalidate: true },
    h('h3', {}, 'Add someone'),
    field('manager-new-email', 'E-mail', email, 'email'),
    field('manager-new-password', 'First password (12 characters or more; tell them)', password, 'password'),
    field('manager-new-role', 'Role', role, 'role'),
    h('button', { type: 'submit', class: 'primary', id: 'manager-create' }, 'Create the account'),
    alert,
  );
  handle(form, alert, async () => {
    const made = await api('POST', '/v1/managers', {
      email: email.value, password: password.value, role: role.value,
    });
    await reload();
    return `Created ${made.email} (${made.role}).`;
  });
  target.replaceChildren(
    rows,
    h('p', { class: 'muted' }, 'A new role signs that person out: they sign in again and have it. '
      + 'Your own role another owner changes.'),
    form,
  );
}

// ------------------------------------------------------------------ the page

function load(promise, target, render) {
  promise.then((data) => render(target, data)).catch((error) => target.replaceChildren(failed(error)));
}

// The page asks who is signed in itself (its role decides what it shows), so that app.js
// renders it like any other page.
export function renderSettings(main) {
  main.replaceChildren(h('h1', {}, 'Settings'), pending());
  api('GET', '/v1/session')
    .then((session) => show(main, session))
    .catch((error) => main.replaceChildren(h('h1', {}, 'Settings'), failed(error)));
}

function show(main, session) {
  const { role } = session.manager;
  const canEdit = role !== 'viewer';
  const owner = role === 'owner';
  const sending = h('div', {}, pending());
  const workspace = h('div', {}, pending());
  const replyTo = h('div', {}, pending());
  const cap = h('div', {}, pending());
  const dkim = h('div', {}, pending());
  const parts = [
    h('h1', {}, 'Settings'),
    canEdit ? null : h('p', { class: 'muted read-only', id: 'read-only' }, 'You can read these settings; a viewer changes nothing.'),
    section('settings-sending', 'Sending status', sending),
    section('settings-sender', 'Sender and consent', workspace, replyTo),
    section('settings-cap', 'Frequency cap', cap),
    section('settings-dkim', 'Sending domains (DKIM)', dkim),
  ];
  let keys = null;
  let team = null;
  if (owner) {
    keys = h('div', {}, pending());
    team = h('div', {}, pending());
    parts.push(section('settings-keys', 'API keys', keys), section('settings-team', 'Team', team));
  } else {
    parts.push(section(
      'settings-owner-only',
      'API keys and team',
      h('p', { class: 'muted' }, 'Only the workspace’s owner manages the API keys and the team.'),
    ));
  }
  main.replaceChildren(...parts.filter(Boolean));
  load(api('GET', '/v1/sending-status'), sending, renderSending);
  load(api('GET', '/v1/workspace/settings'), workspace, (t, s) => renderWorkspace(t, s, canEdit));
  const campaignSettings = api('GET', '/v1/campaign-settings');
  load(campaignSettings, cap, (t, s) => renderCap(t, s, canEdit));
  load(campaignSettings, replyTo, (t, s) => renderReplyTo(t, s, canEdit));
  load(api('GET', '/v1/dkim-keys'), dkim, (t, s) => renderDkim(t, s, canEdit));
  if (owner) {
    load(api('GET', '/v1/api-keys'), keys, renderKeys);
    load(api('GET', '/v1/managers'), team, (t, s) => renderTeam(t, s, session.manager));
  }
}
