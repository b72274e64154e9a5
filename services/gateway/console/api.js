// The console's only way to the server: the gateway's public /v1 routes, same origin, with
// the session cookie. Unsafe methods carry the session's CSRF token (X-CSRF-Token), which
// the sign-in and GET /v1/session answers give and which lives only in this module.

let csrfToken = '';

export function setCsrfToken(token) {
  csrfToken = token || '';
}

export class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.retryAfter = retryAfter ? Number(retryAfter) : null;
  }
}

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

/** extra: more request headers, such as If-Match for a change meant for one version. */
export async function api(method, path, body, extra = {}) {
  const headers = { Accept: 'application/json', ...extra };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (!SAFE.has(method) && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data, response.headers.get('Retry-After'));
    // A session that ended (idle, signed out elsewhere, manager removed or given another
    // role): back to sign-in.
    if (response.status === 401 && path !== '/v1/session') {
      window.dispatchEvent(new CustomEvent('nudge:signed-out'));
    }
    throw error;
  }
  return data;
}

/** The query of one page of a keyset-paged list: `page_size`, and `page_token` after the
 * first page. */
export function pageQuery(size, token) {
  const query = new URLSearchParams({ page_size: String(size) });
  if (token) query.set('page_token', token);
  return query;
}
