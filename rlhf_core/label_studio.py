"""Label Studio as a labelling backend: people pick the better of two replies in its web page.

:class:`LabelStudioLabeler` implements :class:`rlhf_core.labeling.Labeler` over Label Studio's REST
API (1.23.2, standard library only). One Label Studio project per batch, titled ``rlhf <batch>``:

1. ``submit`` creates the project with :data:`LABEL_CONFIG` (the conversation, replies A and B side
   by side, a radio choice "A is better" / "B is better" / "Tie", an optional note) and imports one
   Label Studio task per comparison; each task's data carries the whole :class:`LabelTask` (so
   ``collect`` maps back, and a resubmission can be checked against what is there).
2. ``progress`` / ``collect`` read the project's export: every annotation is one label, keyed by
   (the person's email, task); skipped annotations are counted, not labels; when one person
   labelled a task twice (Label Studio allows it), their latest annotation counts.
3. ``link`` is the project's page, for the people who label.

Authentication (what 1.23.2 does): new organizations accept **personal access tokens** only
(legacy tokens are off unless Label Studio starts with ``--enable-legacy-api-token``). A personal
access token is a JWT *refresh* token (Account & Settings -> Personal Access Token); the API wants
a short-lived access token from ``POST /api/token/refresh/`` (5 minutes, simplejwt's default)
as ``Authorization: Bearer``. A legacy token goes as ``Authorization: Token`` as it is. Without
a key, a username and password log in like the web page does (session cookie + CSRF token).
Credentials live in memory only: never in a file, a log line, an exception or a repr.

A local server for tests and `rlhf ui` starts with :func:`flows.label_studio_server.start_label_studio`.

Standard library only: no requests, no label-studio-sdk.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf_core.conversation import chat_messages
from rlhf_core.errors import ConfigError, DataError, UserError
from rlhf_core.labeling import (
    CHOICES,
    Label,
    LabelError,
    LabelProblem,
    LabelTask,
    Progress,
    _check_batch_name,
    _check_new_tasks,
    _check_same_tasks,
    _progress,
)
from rlhf_core.redact import redact_text, secret_env_values

URL_ENV, KEY_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
USERNAME_ENV, PASSWORD_ENV = "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD"
TITLE_PREFIX = "rlhf "
TITLE_MAX = 50  # Label Studio's PROJECT_TITLE_MAX_LEN
ACCESS_TOKEN_REUSE_S = 240.0  # access tokens live 300 s: renew before, with a margin for slow calls
DEFAULT_TIMEOUT_S = 60.0  # an export of a big project on a busy machine
CHOICE_TAG, NOTE_TAG = "choice", "note"

# What a person sees. Choices' aliases are what an annotation stores ("a", "b", "tie"), whatever
# the buttons say; the replies sit side by side so neither reads as "the default".
LABEL_CONFIG = """\
<View>
  <Header value="The conversation so far" size="4"/>
  <View style="padding: 12px; background: #f4f6f8; border-radius: 6px; white-space: pre-wrap">
    <Text name="conversation" value="$conversation"/>
  </View>
  <Header value="Which reply is better?" size="4"/>
  <View style="display: flex; gap: 16px; align-items: stretch">
    <View style="flex: 1; padding: 12px; border: 1px solid #9aa; border-radius: 6px; white-space: pre-wrap">
      <Header value="Reply A" size="5"/>
      <Text name="reply_a" value="$reply_a"/>
    </View>
    <View style="flex: 1; padding: 12px; border: 1px solid #9aa; border-radius: 6px; white-space: pre-wrap">
      <Header value="Reply B" size="5"/>
      <Text name="reply_b" value="$reply_b"/>
    </View>
  </View>
  <Choices name="choice" toName="reply_a" choice="single-radio" required="true" showInline="true">
    <Choice value="A is better" alias="a" hotkey="1"/>
    <Choice value="B is better" alias="b" hotkey="2"/>
    <Choice value="Tie (neither is better)" alias="tie" hotkey="3"/>
  </Choices>
  <TextArea name="note" toName="reply_a" placeholder="Why? (optional)" rows="2" maxSubmissions="1"
            editable="true" showSubmitButton="false"/>
</View>
"""
INSTRUCTIONS = (
    "<p>Read the conversation, then pick the reply that answers the last user turn better: more helpful, "
    "honest and harmless. Pick <b>Tie</b> only when neither is better. A note is optional.</p>"
)


class LabelStudioError(UserError):
    """Label Studio refused a request (credentials, a bad request) or answered something unexpected."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio is not reachable or failed (5xx): worth trying again later."""


# ----------------------------------------------------------------------------- HTTP and authentication


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The login form answers 302 on success: read that, do not fetch the page behind it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913 - urllib's signature
        return None


@dataclass
class _Auth:
    """How requests prove who sends them. ``env``: the variable(s) to name when Label Studio refuses."""

    env: str
    secret: str = field(repr=False)
    hint = ("create a personal access token in Label Studio (Account & Settings > Personal Access Token) "
            "and set {env} to it")

    def headers(self, client: LabelStudioClient, method: str) -> dict[str, str]:
        return {}

    def renew(self, client: LabelStudioClient) -> bool:
        """Get fresh credentials after a 401; False when there is nothing to renew."""
        return False

    def secrets(self) -> list[str]:
        return [self.secret]


@dataclass
class _LegacyToken(_Auth):
    def headers(self, client: LabelStudioClient, method: str) -> dict[str, str]:
        return {"Authorization": f"Token {self.secret}"}


@dataclass
class _PersonalAccessToken(_Auth):
    """A JWT refresh token, exchanged for 5-minute access tokens as they are needed."""

    access: str | None = field(default=None, repr=False)
    fetched_at: float = 0.0

    def headers(self, client: LabelStudioClient, method: str) -> dict[str, str]:
        if self.access is None or time.monotonic() - self.fetched_at > ACCESS_TOKEN_REUSE_S:
            self.renew(client)
        return {"Authorization": f"Bearer {self.access}"}

    def renew(self, client: LabelStudioClient) -> bool:
        answer = client.send("POST", "/api/token/refresh/", {"refresh": self.secret}, auth=False)
        self.access, self.fetched_at = answer["access"], time.monotonic()
        return True

    def secrets(self) -> list[str]:
        return [self.secret, *([self.access] if self.access else [])]


@dataclass
class _PasswordLogin(_Auth):
    """The web page's login: a session cookie, and Django's CSRF token on every write."""

    username: str = ""
    logged_in: bool = False
    hint = "check {env} (the account Label Studio started with, or one made in its web page)"

    def headers(self, client: LabelStudioClient, method: str) -> dict[str, str]:
        if not self.logged_in:
            self.renew(client)
        if method in ("GET", "HEAD"):
            return {}
        return {"X-CSRFToken": client.cookie("csrftoken") or "", "Referer": client.url + "/"}

    def renew(self, client: LabelStudioClient) -> bool:
        client.send("GET", "/user/login/", auth=False, raw=True)  # sets the csrftoken cookie
        form = {"csrfmiddlewaretoken": client.cookie("csrftoken") or "", "email": self.username,
                "password": self.secret}
        status = client.send("POST", "/user/login/", form, auth=False, raw=True, form=True)
        if status != 302:  # the form again, with an error: a success redirects
            raise LabelStudioError(f"Label Studio at {client.url} refused the login of {self.username!r} "
                                   f"(HTTP {status} from POST /user/login/): {self.hint.format(env=self.env)}")
        self.logged_in = True
        return True


def make_auth(api_key: str | None = None, username: str | None = None, password: str | None = None, *,
              key_env: str = KEY_ENV) -> _Auth:
    """The authentication ``api_key`` (a personal access token or a legacy token) or ``username`` /
    ``password`` call for; a ConfigError naming the variables when neither is given."""
    if api_key:
        if api_key.count(".") == 2 and api_key.startswith("eyJ"):  # a JWT: base64 of '{"'
            return _PersonalAccessToken(env=key_env, secret=api_key)
        return _LegacyToken(env=key_env, secret=api_key)
    if username and password:
        return _PasswordLogin(env=f"{USERNAME_ENV}/{PASSWORD_ENV}", secret=password, username=username)
    raise ConfigError(f"no Label Studio credentials: set {key_env} to a personal access token (Label Studio: "
                      f"Account & Settings > Personal Access Token), or {USERNAME_ENV} and {PASSWORD_ENV}")


class LabelStudioClient:
    """JSON over HTTP to one Label Studio, with errors that name the URL, the call and what to do."""

    def __init__(self, url: str, auth: _Auth | None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{URL_ENV}={url!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)")
        self.url = url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self._cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self._cookies), _NoRedirect)

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self._cookies if c.name == name), None)

    def call(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        """``method path`` with a JSON ``body``; the JSON answer. One retry with renewed credentials on a 401."""
        for attempt in (0, 1):
            try:
                return self.send(method, path, body, query=query)
            except _Refused as refused:
                if attempt or refused.code != 401 or not self._renewed():
                    raise self._refused(refused) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _renewed(self) -> bool:
        try:
            return self.auth is not None and self.auth.renew(self)
        except _Refused:  # the refresh or the login itself was refused: report the first refusal
            return False

    def send(self, method: str, path: str, body: Any = None, *, query: Mapping[str, Any] | None = None,
             auth: bool = True, raw: bool = False, form: bool = False) -> Any:
        """One request; ``_Refused`` on 401/403, LabelStudioError / LabelStudioUnavailable on other failures.
        ``raw``: the HTTP status instead of the JSON answer (a redirect is an answer, not an error)."""
        request = self._request(method, path, body, query, auth=auth, form=form)
        where = f"{method} {path}"
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                payload, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            if raw and exc.code in (301, 302, 303):
                return exc.code
            raise self._http_error(exc, where) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, timed out, no such host
            reason = getattr(exc, "reason", exc)
            raise LabelStudioUnavailable(self._clean(f"Label Studio at {self.url} is not reachable: {reason} "
                                                     f"({where}; is it running?)")) from None
        return status if raw else self._json(payload, where)

    def _request(self, method: str, path: str, body: Any, query: Mapping[str, Any] | None, *,
                 auth: bool, form: bool) -> urllib.request.Request:
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = (urllib.parse.urlencode(body) if form else json.dumps(body)).encode("utf-8")
            headers["Content-Type"] = "application/x-www-form-urlencoded" if form else "application/json"
        if form:
            headers["Referer"] = self.url + path  # Django's CSRF check on a form post
        if auth and self.auth is not None:
            headers.update(self.auth.headers(self, method))
        return urllib.request.Request(url, data=data, headers=headers, method=method)

    def _http_error(self, exc: urllib.error.HTTPError, where: str) -> Exception:
        detail = _detail(exc)
        if exc.code in (401, 403):
            return _Refused(exc.code, detail, where)
        if exc.code >= 500:
            return LabelStudioUnavailable(self._clean(f"Label Studio at {self.url} failed on {where}: HTTP {exc.code} "
                                                      f"{detail} (see its log)"))
        return LabelStudioError(self._clean(f"Label Studio at {self.url} refused {where}: HTTP {exc.code} {detail}"))

    def _refused(self, refused: _Refused) -> LabelStudioError:
        auth = self.auth or _Auth(env=KEY_ENV, secret="")
        return LabelStudioError(self._clean(
            f"Label Studio at {self.url} refused the credentials in {auth.env} (HTTP {refused.code} on "
            f"{refused.where}: {refused.detail}); {auth.hint.format(env=auth.env)}"))

    def _json(self, payload: bytes, where: str) -> Any:
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            message = (f"Label Studio at {self.url} answered {where} with something that is not JSON "
                       f"({payload[:80]!r}): is {URL_ENV} the address of Label Studio?")
            raise LabelStudioError(self._clean(message)) from None

    def _clean(self, message: str) -> str:
        """The message with every credential this client holds (or the environment has) masked."""
        held = self.auth.secrets() if self.auth is not None else []
        return redact_text(message, [*held, *secret_env_values()])


class _Refused(Exception):
    def __init__(self, code: int, detail: str, where: str) -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.detail, self.where = code, detail, where


def _detail(exc: urllib.error.HTTPError) -> str:
    """Label Studio's own words for an error (its JSON ``detail`` / validation errors), cut short."""
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        return str(exc.reason)
    if isinstance(body, dict):
        found = body.get("detail") or body.get("validation_errors") or body
        return str(found)[:300]
    return str(body)[:300]


# ----------------------------------------------------------------------------- tasks and annotations (pure)


def task_data(task: LabelTask) -> dict[str, Any]:
    """A Label Studio task's ``data``: the whole task (to map labels back, and to compare on resubmit),
    and ``conversation``, the text a person reads above the replies."""
    return {**task.to_dict(), "conversation": conversation_text(task)}


def conversation_text(task: LabelTask) -> str:
    """``User: ...`` / ``Assistant: ...`` turns, a blank line apart (Label Studio's dialogue view,
    Paragraphs, adds an author filter and audio timestamps that mean nothing here)."""
    turns = chat_messages(task.prompt, task.prompt_messages)
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


def task_from_data(data: Mapping[str, Any]) -> LabelTask:
    """The :class:`LabelTask` a task's data carries; ValueError when it carries none or a wrong one."""
    if not isinstance(data, Mapping) or "task_id" not in data:
        raise ValueError("its data has no task_id (not a task this pipeline submitted)")
    return LabelTask.from_dict({k: v for k, v in data.items() if k != "conversation"})


@dataclass(frozen=True)
class ProjectLabels:
    """What a project holds: its tasks by task_id, one label per (annotator, task), and counts of
    the annotations that are not labels (``skipped``) or were replaced by the same person's later one."""

    tasks: dict[str, LabelTask]
    labels: list[Label]
    skipped: int = 0
    replaced: int = 0


def read_export(exported: Sequence[Mapping[str, Any]], users: Mapping[int, str], where: str) -> ProjectLabels:
    """Tasks and labels from a project's JSON export (``/api/projects/ID/export?exportType=JSON``).

    ``users``: Label Studio user id -> email (the annotator). A LabelError names ``where``, the Label
    Studio task id and the rule for every task or annotation that cannot be mapped.
    """
    problems: list[LabelProblem] = []
    tasks: dict[str, LabelTask] = {}
    latest: dict[tuple[str, str], tuple[str, Label]] = {}
    skipped = replaced = 0
    for item in exported:
        task = _task_of(item, tasks, problems)
        if task is None:
            continue
        tasks[task.task_id] = task
        for ann in item.get("annotations") or []:
            if ann.get("was_cancelled"):
                skipped += 1
                continue
            label = _label_of(ann, task.task_id, int(item["id"]), users, problems)
            if label is None:
                continue
            key, stamp = (label.annotator, label.task_id), str(ann.get("updated_at") or "")
            if key in latest:
                replaced += 1
                if stamp < latest[key][0]:
                    continue
            latest[key] = (stamp, label)
    if problems:
        raise LabelError(where, problems)
    return ProjectLabels(tasks, [label for _, label in latest.values()], skipped, replaced)


def _task_of(item: Mapping[str, Any], seen: Mapping[str, LabelTask], problems: list[LabelProblem]) -> LabelTask | None:
    try:
        task = task_from_data(item.get("data"))
    except (ValueError, TypeError) as exc:
        problems.append(LabelProblem(int(item["id"]), "unknown_task", str(exc)))
        return None
    if task.task_id in seen:
        problems.append(LabelProblem(int(item["id"]), "duplicate_task", f"task {task.task_id} is in the project twice"))
        return None
    return task


def _label_of(ann: Mapping[str, Any], task_id: str, ls_task: int, users: Mapping[int, str],
              problems: list[LabelProblem]) -> Label | None:
    annotator = users.get(ann.get("completed_by"), f"label-studio-user-{ann.get('completed_by')}")
    chosen = [c for r in ann.get("result") or [] if r.get("from_name") == CHOICE_TAG
              for c in (r.get("value") or {}).get("choices") or []]
    if len(chosen) != 1 or chosen[0] not in CHOICES:
        rule = "no_choice" if not chosen else "bad_choice"
        problems.append(LabelProblem(ls_task, rule, f"annotation {ann.get('id')} by {annotator} chose {chosen} "
                                                    f"(expected exactly one of {', '.join(CHOICES)})"))
        return None
    notes = [t for r in ann.get("result") or [] if r.get("from_name") == NOTE_TAG
             for t in (r.get("value") or {}).get("text") or []]
    note = "\n".join(n for n in notes if n.strip()) or None
    return Label(task_id=task_id, choice=chosen[0], annotator=annotator, note=note)


# ----------------------------------------------------------------------------- the labeler


@dataclass
class LabelStudioLabeler:
    """Batches as Label Studio projects (see the module docstring). ``annotators_per_task``: how many
    people Label Studio's labelling stream shows each task to (its "overlap"), for agreement."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    annotators_per_task: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    name: str = "label-studio"

    def __post_init__(self) -> None:
        if self.annotators_per_task < 1:
            raise ConfigError(f"label-studio labeler: annotators_per_task must be >= 1, got {self.annotators_per_task}")
        auth = make_auth(self.api_key, self.username, self.password)
        self.client = LabelStudioClient(self.url, auth, self.timeout_s)
        self.url = self.client.url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> LabelStudioLabeler:
        """From ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (or ``LABEL_STUDIO_USERNAME`` and
        ``LABEL_STUDIO_PASSWORD``, the login Label Studio itself starts with)."""
        env = os.environ if environ is None else environ
        url = env.get(URL_ENV, "").strip()
        if not url:
            raise ConfigError(f"{URL_ENV} is not set: the address of Label Studio, e.g. http://127.0.0.1:8080")
        return cls(url, api_key=env.get(KEY_ENV) or None, username=env.get(USERNAME_ENV) or None,
                   password=env.get(PASSWORD_ENV) or None, **kwargs)

    def check(self) -> None:
        """Label Studio answers and takes the credentials: a round calls this before it samples anything."""
        self.client.call("GET", "/api/projects/", query={"page_size": 1})

    # -- the Labeler protocol

    def submit(self, tasks: Sequence[LabelTask], batch: str) -> None:
        """Create the batch's project and import the tasks; the same tasks again are a no-op."""
        title = project_title(batch)
        new = _check_new_tasks(tasks, batch)
        project = self._find(title)
        if project is None:
            project = self.client.call("POST", "/api/projects/", self._project_body(title))
        else:
            there = self._read(project).tasks
            if there:  # empty: a submit that died between creating the project and importing
                _check_same_tasks(there, new, batch, f"Label Studio project {self._link(project)}")
                return
        self.client.call("POST", f"/api/projects/{project['id']}/import", [{"data": task_data(t)} for t in tasks])

    def progress(self, batch: str) -> Progress:
        read = self._read(self._project(batch))
        return _progress(read.tasks.keys(), read.labels)

    def collect(self, batch: str) -> list[Label]:
        return self._read(self._project(batch)).labels

    # -- beyond the protocol

    def link(self, batch: str) -> str:
        """The batch's project page, where people start labelling ("Label All Tasks")."""
        return self._link(self._project(batch))

    def annotation_counts(self, batch: str) -> dict[str, int]:
        """``labels``, ``skipped`` (annotations people skipped: not labels) and ``replaced`` (a person's
        earlier annotation of a task they annotated again: only the latest counts)."""
        read = self._read(self._project(batch))
        return {"labels": len(read.labels), "skipped": read.skipped, "replaced": read.replaced}

    # -- Label Studio calls

    def _project_body(self, title: str) -> dict[str, Any]:
        return {"title": title, "label_config": LABEL_CONFIG, "expert_instruction": INSTRUCTIONS,
                "show_instruction": False, "show_skip_button": True, "maximum_annotations": self.annotators_per_task,
                "description": "Pairwise comparisons of a policy's replies (rlhf-pipeline)."}

    def _find(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly ``title`` (Label Studio's filter is a substring match), or None."""
        found, page = [], 1
        while True:
            answer = self.client.call("GET", "/api/projects/", query={"title": title, "page": page, "page_size": 100})
            found += [p for p in answer["results"] if p.get("title") == title]
            if not answer.get("next"):
                break
            page += 1
        if len(found) > 1:
            ids = ", ".join(str(p["id"]) for p in found)
            raise DataError(f"Label Studio at {self.url} has {len(found)} projects titled {title!r} (ids {ids}): "
                            f"rename or delete all but one")
        return found[0] if found else None

    def _project(self, batch: str) -> dict[str, Any]:
        project = self._find(project_title(batch))
        if project is None:
            raise DataError(f"{self.name} labeler: batch {batch!r} was never submitted "
                            f"(no project {project_title(batch)!r} in Label Studio at {self.url})")
        return project

    def _link(self, project: Mapping[str, Any]) -> str:
        return f"{self.url}/projects/{project['id']}"

    def _read(self, project: Mapping[str, Any]) -> ProjectLabels:
        exported = self.client.call("GET", f"/api/projects/{project['id']}/export",
                                    query={"exportType": "JSON", "download_all_tasks": "true"})
        users = self._users() if any(item.get("annotations") for item in exported) else {}
        where = f"Label Studio project {project['title']!r} ({self._link(project)}) task"
        return read_export(exported, users, where)

    def _users(self) -> dict[int, str]:
        answer = self.client.call("GET", "/api/users/")
        rows = answer["results"] if isinstance(answer, dict) else answer
        return {int(u["id"]): u.get("email") or u.get("username") or f"label-studio-user-{u['id']}" for u in rows}


def project_title(batch: str) -> str:
    """``rlhf <batch>``. Label Studio holds 50 characters: a longer one keeps its start and ends in
    ``~`` and 8 hex digits of its sha256, still one title per batch (a round's batch is its run id,
    ``<date>-<time>-<config>-round<n>-<hex>``, long for a long config name)."""
    _check_batch_name(batch)
    title = TITLE_PREFIX + batch
    if len(title) <= TITLE_MAX:
        return title
    digest = hashlib.sha256(batch.encode("utf-8")).hexdigest()[:8]
    return title[: TITLE_MAX - len(digest) - 1] + "~" + digest


def create_access_token(url: str, username: str, password: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """A new personal access token for ``username``, made through a login as the web page makes it.

    Label Studio keeps one per person: a LabelStudioError says so when one exists already (revoke it
    in Account & Settings, or use the username and password instead of a key).
    """
    client = LabelStudioClient(url, _PasswordLogin(env=f"{USERNAME_ENV}/{PASSWORD_ENV}", secret=password,
                                                   username=username), timeout)
    return client.call("POST", "/api/token/", {})["token"]
