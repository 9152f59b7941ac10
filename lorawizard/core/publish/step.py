"""Publish step: the kept LoRA, a model card and the sample grid to a Hugging Face model repository.

Runs only when asked: `--replay S --steps publish`, a full replay whose session has `[publish] repo`, or key p on the
Train screen (after a confirmation). Through `huggingface_hub` (`HfApi` with the endpoint read at call time):

1. `whoami` checks the token (HF_TOKEN, else huggingface_hub's stored token — we never take one on a command line
   and never write one) and that it may write to the repo's namespace;
2. `create_repo` (private by default). A 409 means the repo exists: fine when an earlier publish of this project
   created it (`.lorawizard/publish.json`) or `[publish] existing = true`, else a one-line refusal;
3. one commit per file, the LoRA first and README.md last: files already in the repo with the same sha256 (LFS) or
   git blob id and size are skipped, so a rerun after a cut network continues where it stopped.

Every failure is one line (StepFailed): no token, a read-only token or someone else's namespace, the repo exists,
no network, the hub's own errors. The token is never logged, shown or stored by us.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorawizard.core.common.fsutil import atomic_write_json, read_json_object
from lorawizard.core.common.progress import ProgressMeter, format_bytes, format_duration
from lorawizard.core.common.text import one_line
from lorawizard.core.contract import StepContext, StepFailed, StepResult
from lorawizard.core.profile import DEFAULT_FAMILY, ModelFamily, family_for
from lorawizard.core.session.document import Session

BASE_MODEL = DEFAULT_FAMILY.hub_repo  # the default family's; a session's card reads family_for(session)
LICENSE_NAME = DEFAULT_FAMILY.licence.name
LICENSE_LINK = DEFAULT_FAMILY.licence.link


def card_tags(family: ModelFamily) -> tuple[str, ...]:
    return ("text-to-image", *family.card_tags, "lora", "template:sd-lora", family.backend.card_tag, "lorawizard")


def licence_lines(family: ModelFamily) -> list[str]:
    """The card's licence metadata: a Hub licence id (`apache-2.0`), or `other` with the licence's name and link."""
    q = json.dumps
    if family.licence_id != "other":
        return [f"license: {family.licence_id}"]
    return ["license: other", f"license_name: {q(family.licence.name)}", f"license_link: {q(family.licence.link)}"]


DEFAULT_TAGS = card_tags(DEFAULT_FAMILY)
STATE_FILE = "publish.json"
TOKEN_HELP = ("log in with `hf auth login` (or the Models step's key t, which stores it the same way), "
              "or set HF_TOKEN; a write token from https://huggingface.co/settings/tokens")


@dataclass
class PublishFile:
    path_in_repo: str
    source: Path | None = None  # a file on disk, or
    data: bytes | None = None  # generated content (the model card)

    @property
    def file(self) -> Path:
        if self.source is None:
            raise ValueError(f"{self.path_in_repo}: neither a file nor content")
        return self.source

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.file.stat().st_size

    def read(self) -> bytes:
        return self.data if self.data is not None else self.file.read_bytes()

    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        from lorawizard.core.models.finder import sha256_of

        return sha256_of(self.file)

    def git_sha1(self) -> str:
        data = self.read()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Plan:
    repo: str  # as written in session.toml ("user/name" or "name")
    private: bool
    lora: Path
    files: list[PublishFile]
    card: str


# ------------------------------------------------------------------ what goes up


def problem(session: Session, *, need_token: bool = True) -> str | None:
    """A one-line reason publishing cannot start (a setting or the token), or None: replay exits 2 on it."""
    if not session.is_set("publish.repo"):
        return 'publishing needs [publish] repo = "user/name" in session.toml (see docs/session.md)'
    if need_token:
        from lorawizard.core.models.download import hub_token, is_offline

        if is_offline():
            return "offline mode is on (HF_HUB_OFFLINE is set), so nothing can be published: unset HF_HUB_OFFLINE"
        if not hub_token():
            return f"no Hugging Face token: {TOKEN_HELP}"
    return None


def plan(session: Session, *, keep: bool = True, dry_run: bool = False) -> Plan:
    """The files to publish: the kept LoRA (kept now from train.keep_epoch or the final LoRA when none is), its
    sample grid and the model card. Raises StepFailed with one line. `dry_run`: nothing is kept (copied into loras/);
    the LoRA that would be kept is listed under the name it would get."""
    from lorawizard.core.train.keep import KeepError, keep_epoch, kept_lora

    repo = session.publish.repo
    if repo is None:
        raise StepFailed(problem(session, need_token=False) or "no [publish] repo")
    lora = kept_lora(session)
    if lora is None and dry_run:
        return _dry_plan(session, repo)
    if lora is None and keep:
        try:
            lora = keep_epoch(session, session.train.keep_epoch).lora
        except KeepError as exc:
            raise StepFailed(f"nothing to publish: {exc}") from None
    if lora is None:
        raise StepFailed("nothing to publish: no kept LoRA in loras/ (train first, or keep an epoch: g then k)")
    sidecar = read_json_object(lora.with_suffix(".json"))
    samples = _sample_files(session, sidecar)
    card = model_card(session, lora, sidecar, samples)
    files = [PublishFile(lora.name, source=lora)]
    files += [PublishFile(path, source=source) for path, source, _, _ in samples]
    files.append(PublishFile("README.md", data=card.encode("utf-8")))
    return Plan(repo=repo, private=session.publish.private, lora=lora, files=files, card=card)


def _dry_plan(session: Session, repo: str) -> Plan:
    """A dry run's plan when no LoRA is kept yet: the run's file that keeping would copy, listed under its kept name."""
    from lorawizard.core.train.keep import KeepError, find_epoch

    try:
        source, record = find_epoch(session, int(session.train.keep_epoch or 0))
    except KeepError as exc:
        raise StepFailed(f"nothing to publish: {exc}") from None
    epoch = session.train.keep_epoch or session.train.max_train_epochs
    sidecar = {"epoch": epoch, "run_id": record.run_id}
    samples = _sample_files(session, sidecar)
    card = model_card(session, source, sidecar, samples)
    files = [PublishFile(f"{session.name}-e{epoch}.safetensors", source=source)]
    files += [PublishFile(path, source=path_) for path, path_, _, _ in samples]
    files.append(PublishFile("README.md", data=card.encode("utf-8")))
    return Plan(repo=repo, private=session.publish.private, lora=source, files=files, card=card)


def _sample_files(session: Session, sidecar: dict[str, Any]) -> list[tuple[str, Path, int, int]]:
    """(path in repo, file, prompt index, epoch) for the sample grid of the kept LoRA's run: every epoch, baseline first."""
    from lorawizard.core.train import samples
    from lorawizard.core.train.compare import project_records
    from lorawizard.core.train.keep import run_chain

    name = str(sidecar.get("output_name") or session.name)  # a variant's samples are named `<name>-<variant>_e…`
    record = next((r for r in project_records(session) if r.run_id == sidecar.get("run_id")), None)
    images: list[samples.SampleImage] = []
    if record is not None:
        output = record.output_name or name
        grid = samples.gallery([r.dir for r in run_chain(record)], output, samples.read_prompts(record.dir))
        images = [grid.cells[key] for key in sorted(grid.cells, key=lambda k: (k[1], k[0]))]
    else:  # the run folder is gone: the kept epoch's samples the sidecar lists
        for text in sidecar.get("samples") or []:
            image = samples.parse_sample_name(Path(str(text)), name)
            if image is not None and samples.is_complete_png(image.path):
                images.append(image)
    return [(f"samples/epoch{img.epoch:03d}-prompt{img.index:02d}.png", img.path, img.index, img.epoch)
            for img in images]


def _cell(text: str) -> str:
    """Text for a markdown table cell: one line, no pipes or HTML."""
    return one_line(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def model_card(session: Session, lora: Path, sidecar: dict[str, Any],
               samples: list[tuple[str, Path, int, int]]) -> str:
    """README.md: YAML metadata (base model, licence, tags, trigger, widget) and the card text."""
    name = session.name
    trigger = str(sidecar.get("trigger") or session.dataset.trigger or "")
    prompts = [str(p) for p in (sidecar.get("sample_prompts") or [])]
    settings = _card_settings(session, sidecar)
    epoch = sidecar.get("epoch")
    family = family_for(session)
    base_model = str(sidecar.get("base_model") or family.base_model(session.models.preset))
    tags = list(dict.fromkeys([*card_tags(family), *session.publish.tags]))
    q = json.dumps  # a JSON string is a valid YAML double-quoted scalar (quotes, newlines, non-ASCII all safe)
    meta = [
        "---",
        f"base_model: {q(base_model)}",
        *licence_lines(family),
        "pipeline_tag: text-to-image",
        "tags:",
        *(f"- {q(tag)}" for tag in tags),
    ]
    if trigger:
        meta.append(f"instance_prompt: {q(trigger)}")
    meta += _widget_lines(samples, prompts, epoch, fallback=trigger or name)
    meta.append("---")

    body = [
        "",
        f"# {_cell(name)}",
        "",
        f"A LoRA for [{family.card_title}](https://huggingface.co/{base_model}), trained with "
        f"[{family.backend.name}](https://github.com/{family.backend.name}) through lorawizard.",
        "",
        "## Trigger word",
        "",
        f"Write `{_cell(trigger)}` in the prompt." if trigger else "This LoRA was trained without a trigger word.",
        "",
        "## Download",
        "",
        f"[{lora.name}](./{lora.name})" + (f" — epoch {epoch} of {settings.get('max_train_epochs')}" if epoch else ""),
        "",
    ]
    body += _samples_section(samples, prompts)
    body += _settings_section(session, sidecar, settings)
    body += ["", "## License", "",
             f"This LoRA is a derivative of {family.card_title} and is subject to the "
             f"[{family.licence.title}]({family.licence.link}).", ""]
    return "\n".join(meta + body)


def _card_settings(session: Session, sidecar: dict[str, Any]) -> dict[str, Any]:
    """The training settings the card lists: the kept LoRA's (its sidecar), else the session's."""
    settings = sidecar.get("settings") if isinstance(sidecar.get("settings"), dict) else {}
    if not settings:
        settings = {key.removeprefix("train."): session.get(key) for key in (
            "train.network_dim", "train.learning_rate", "train.max_train_epochs", "train.save_every_n_epochs",
            "train.optimizer_type", "train.seed", "train.extra_args")}
    return settings


def _widget_lines(samples: list[tuple[str, Path, int, int]], prompts: list[str], epoch: Any, *,
                  fallback: str) -> list[str]:
    """The metadata's widget: the kept epoch's samples (else the last epoch's), each with its prompt."""
    q = json.dumps  # a JSON string is a valid YAML double-quoted scalar
    last = max((e for _, _, _, e in samples), default=None)
    shown = [s for s in samples if s[3] == (epoch if any(x[3] == epoch for x in samples) else last)]
    if not shown:
        return []
    lines = ["widget:"]
    for path, _, index, _ in shown:
        text = prompts[index] if index < len(prompts) else fallback
        lines += [f"- text: {q(text)}", "  output:", f"    url: {q(path)}"]
    return lines


def _samples_section(samples: list[tuple[str, Path, int, int]], prompts: list[str]) -> list[str]:
    """The sample grid as a table: one row per prompt, one column per epoch; nothing without samples."""
    if not samples:
        return []
    epochs = sorted({e for _, _, _, e in samples})
    rows = sorted({i for _, _, i, _ in samples})
    where = {(i, e): path for path, _, i, e in samples}
    lines = ["## Samples", "",
             "One row per prompt, one column per epoch (fixed seed, so the columns compare the epochs).", "",
             "| prompt | " + " | ".join("before training" if e == 0 else f"epoch {e}" for e in epochs) + " |",
             "|---|" + "---|" * len(epochs)]
    for row in rows:
        text = prompts[row] if row < len(prompts) else f"prompt {row + 1}"
        cells = [f"![epoch {e}]({where[(row, e)]})" if (row, e) in where else "" for e in epochs]
        lines.append(f"| {_cell(text)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _settings_section(session: Session, sidecar: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The training settings table: the kept epoch and step, every set value, the dataset's repeats and size."""
    epoch = sidecar.get("epoch")
    lines = ["## Training settings", "", "| setting | value |", "|---|---|"]
    if sidecar.get("variant"):
        lines.append(f"| variant | {_cell(str(sidecar['variant']))} |")
    if epoch:
        lines.append(f"| epoch kept | {epoch} |")
    if sidecar.get("step"):
        lines.append(f"| steps | {sidecar['step']} |")
    for key, value in settings.items():
        shown_value = " ".join(value) if isinstance(value, list) else value
        if shown_value not in ("", None):
            lines.append(f"| {_cell(str(key))} | {_cell(str(shown_value))} |")
    lines.append(f"| num_repeats | {session.dataset.num_repeats} |")
    lines.append(f"| max_side | {session.dataset.max_side} |")
    return lines


# ------------------------------------------------------------------ the step


def run_step(ctx: StepContext) -> StepResult:
    session = ctx.session
    blocked = problem(session, need_token=not ctx.dry_run)
    if blocked:
        raise StepFailed(blocked)
    the_plan = plan(session, dry_run=ctx.dry_run)  # a dry run only lists: nothing is copied into loras/
    total = sum(f.size for f in the_plan.files)
    if ctx.dry_run:
        for f in the_plan.files:
            ctx.log(f"would upload {f.path_in_repo} ({format_bytes(f.size)})")
        visibility = "private" if the_plan.private else "public"
        return StepResult(True, f"dry run: would publish {len(the_plan.files)} files ({format_bytes(total)}) to "
                                f"{the_plan.repo} ({visibility}); nothing was sent")
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # huggingface_hub's tqdm writes to stderr: our progress goes through ctx.progress
    try:
        return _publish(ctx, the_plan, total)
    finally:
        if not bars_were_off:
            enable_progress_bars()


def _publish(ctx: StepContext, the_plan: Plan, total: int) -> StepResult:
    from huggingface_hub import CommitOperationAdd, HfApi

    from lorawizard.core.models.download import hub_endpoint

    session = ctx.session
    api = HfApi(endpoint=hub_endpoint())
    repo_id = the_plan.repo
    try:
        info = api.whoami()  # token=None: HF_TOKEN or the stored token, read by huggingface_hub itself
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise _explain(exc, repo_id) from None
    user = str(info.get("name") or "")
    orgs = [str(o.get("name")) for o in info.get("orgs") or [] if isinstance(o, dict)]
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if "/" not in repo_id:
        repo_id = f"{user}/{repo_id}"
    namespace = repo_id.split("/", 1)[0]
    if namespace != user and namespace not in orgs:
        raise StepFailed(f"{repo_id}: the namespace {namespace!r} is not yours (the token belongs to {user!r}"
                         + (f", member of {', '.join(orgs)}" if orgs else "") + f"): choose [publish] repo = "
                         f"\"{user}/{repo_id.split('/', 1)[1]}\" or a name in one of your organisations")
    if role == "read":
        raise StepFailed(f"the token of {user!r} is read-only: publishing needs a write token "
                         "(https://huggingface.co/settings/tokens), stored with `hf auth login` or set in HF_TOKEN")
    state_path = session.paths.state / STATE_FILE
    state = read_json_object(state_path)
    ctx.check_cancelled()
    created = _create_repo(ctx, api, repo_id, the_plan.private, state)
    state = {"repo": repo_id, "created": created or (state.get("repo") == repo_id and bool(state.get("created"))),
             "url": f"{hub_endpoint()}/{repo_id}", "files": dict(state.get("files") or {}) if state.get("repo") == repo_id else {}}
    _save_state(ctx, state_path, state)

    remote = _remote_files(api, repo_id, [f.path_in_repo for f in the_plan.files])
    meter = ProgressMeter(ctx.progress, "publish", f"uploading to {repo_id}", total, "B", interval=0.5)
    meter.update(0, force=True)
    uploaded: list[str] = []
    skipped: list[str] = []
    for f in the_plan.files:
        ctx.check_cancelled()
        size = f.size
        if _same(f, remote.get(f.path_in_repo)):
            skipped.append(f.path_in_repo)
            meter.update(meter.done + size, f"{f.path_in_repo} already there", force=True)
            continue
        meter.update(meter.done, f"{f.path_in_repo} ({format_bytes(size)})", force=True)
        source: Any = str(f.source) if f.source is not None else f.data
        try:
            with _heartbeat(meter, f"{f.path_in_repo} ({format_bytes(size)})"):
                api.create_commit(repo_id, [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=source)],
                                  commit_message=f"lorawizard: upload {f.path_in_repo}")
        except Exception as exc:  # noqa: BLE001
            error = _explain(exc, repo_id)
            raise StepFailed(f"{error} ({len(uploaded) + len(skipped)} of {len(the_plan.files)} files are up; "
                             "publish again to continue)") from None
        uploaded.append(f.path_in_repo)
        state["files"][f.path_in_repo] = {"size": size, "uploaded": time.time()}
        _save_state(ctx, state_path, state)
        meter.update(meter.done + size, f"{f.path_in_repo} uploaded", force=True)
        ctx.log(f"uploaded {f.path_in_repo} ({format_bytes(size)})")
    meter.finish(f"{len(uploaded)} uploaded, {len(skipped)} already there")
    if skipped:
        ctx.log(f"already in {repo_id} with the same content: {', '.join(skipped)}")
    url = state["url"]
    visibility = "private" if the_plan.private else "public"
    return StepResult(True, f"published {the_plan.lora.name} to {url} ({len(uploaded)} files uploaded, "
                            f"{len(skipped)} already there)",
                      details=[f"repo: {url} ({visibility} when created)"],
                      data={"repo": repo_id, "url": url, "uploaded": uploaded, "skipped": skipped})


@contextmanager
def _heartbeat(meter: ProgressMeter, detail: str, every: float = 1.0) -> Iterator[None]:
    """While one file uploads (huggingface_hub reports nothing to us), repeat the progress line each second with the
    time spent on it, so a large LoRA shows it is moving; the ETA stays the meter's (from the files before)."""
    stop = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not stop.wait(every):
            meter.callback(meter.snapshot(f"{detail}, {format_duration(time.monotonic() - started)} on it"))

    thread = threading.Thread(target=tick, name="publish-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _create_repo(ctx: StepContext, api: Any, repo_id: str, private: bool, state: dict[str, Any]) -> bool:
    """Create the repo; True when this call created it. A 409 is fine only for our own repo or `existing`."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, private=private, exist_ok=False)
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status != 409:
            raise _explain(exc, repo_id) from None
        ours = state.get("repo") == repo_id and state.get("created")
        if not ours and not ctx.session.publish.existing:
            raise StepFailed(f"{repo_id} already exists and this project did not create it: choose another "
                             "[publish] repo, or set [publish] existing = true to upload into it") from None
        ctx.log(f"{repo_id} exists ({'created by an earlier publish' if ours else 'publish.existing = true'}): "
                "continuing; files already there are skipped")
        return False
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, repo_id) from None
    ctx.log(f"created {'private' if private else 'public'} repo {repo_id}")
    return True


def _remote_files(api: Any, repo_id: str, paths: list[str]) -> dict[str, Any]:
    """What the repo already holds at these paths (RepoFile: size, blob_id, lfs.sha256)."""
    try:
        entries = api.get_paths_info(repo_id, paths)
        return {e.path: e for e in entries if hasattr(e, "size")}
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, repo_id) from None


def _same(local: PublishFile, remote: Any) -> bool:
    """Whether the repo already has this exact file: LFS sha256 + size, or the git blob id of a small file."""
    if remote is None or getattr(remote, "size", None) != local.size:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        return str(getattr(lfs, "sha256", "")) == local.sha256()
    return str(getattr(remote, "blob_id", "")) == local.git_sha1()


def _save_state(ctx: StepContext, path: Path, state: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, state)
    except OSError as exc:
        ctx.log(f"cannot write {path}: {exc.strerror or exc} (a rerun still skips what is uploaded)")


def _explain(exc: BaseException, repo_id: str) -> StepFailed:
    """A hub or network failure → one line: what happened and what to do."""
    if isinstance(exc, StepFailed):
        return exc
    from huggingface_hub import errors

    from lorawizard.core.models.download import hub_endpoint, is_network_error, short_error

    status = getattr(getattr(exc, "response", None), "status_code", None)
    message = one_line(str(getattr(exc, "server_message", "") or ""))[:160]
    said = f" ({message})" if message else ""
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return StepFailed("offline mode is on (HF_HUB_OFFLINE is set), so nothing can be published: unset HF_HUB_OFFLINE")
    if isinstance(exc, errors.LocalTokenNotFoundError):
        return StepFailed(f"no Hugging Face token: {TOKEN_HELP}")
    if status == 401:
        return StepFailed(f"the hub refused the token (401, invalid or expired){said}: {TOKEN_HELP}")
    if status == 403:
        return StepFailed(f"no write access to {repo_id} (403){said}: publishing needs a write token for this "
                          "namespace (https://huggingface.co/settings/tokens)")
    if isinstance(exc, errors.RepositoryNotFoundError) or status == 404:
        return StepFailed(f"{repo_id} was not found (404){said}: check [publish] repo and that the token can see it")
    if status is not None:
        return StepFailed(f"the hub answered {status} for {repo_id}{said}: try again later; a rerun skips what is up")
    if is_network_error(exc):
        return StepFailed(f"the hub at {hub_endpoint()} is unreachable ({short_error(exc)}): check the network "
                          "(or HF_ENDPOINT); a rerun skips what is already up")
    return StepFailed(f"publishing to {repo_id} failed: {type(exc).__name__}: {short_error(exc)}")
