"""The probe's saved measurements: peaks and s/step per bucket, how and when measured (train and the GPU screen
read them; the probe step writes them), and what a fastest fit (`gpu.fit`) was measured for: the GPU, the buckets, the
settings that change memory or speed — a difference means it must be measured again."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lorawizard.core.profile import family_for
from lorawizard.core.session.document import FIELDS, Session

RESULTS_FILE = "probe.json"  # in <project>/.lorawizard/


def load_results(session: Session) -> dict[str, Any]:
    """The last probe's measurements (`.lorawizard/probe.json`), {} when none."""
    path = session.paths.state / RESULTS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        return {}


FINGERPRINT_KEYS = ("models.preset", "train.network_dim", "train.optimizer_type", "train.mixed_precision",
                    "train.base_precision", "train.extra_args", "gpu.fit", "gpu.vram_preset", "dataset.max_side")


def fit_gpu_key(session: Session, uuids: list[str] | None = None) -> str:
    """The GPU a fit was measured for, as its fingerprint's `gpu`: the one card's UUID, or with several chosen cards
    (DDP) every one of them, sorted and joined with "," — adding, removing or swapping a card means measuring again.
    `uuids`: the cards at hand (the probe's, the screen's); else the session's (`gpu.uuids` when 2+, else `gpu.uuid`).
    "" when none is known."""
    if uuids is None:
        several = [u for u in session.gpu.uuids if u]
        uuids = several if len(several) > 1 else [u for u in (session.gpu.uuid,) if u]
    return ",".join(sorted(set(uuids)))


def fit_fingerprint(session: Session, gpu_uuid: str, buckets: dict[str, int]) -> dict[str, str]:
    """What a fit was measured for: the GPU, the buckets (sizes and image counts), the settings that change memory
    or speed (the model files too). Saved in probe.json; a difference means: measure again."""
    keys = [*FINGERPRINT_KEYS, "models.family", *(f"models.{role}" for role in family_for(session).role_names)]
    settings = {key: session.get(key) for key in keys if key in FIELDS}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"gpu": gpu_uuid, "buckets": ",".join(f"{b}:{n}" for b, n in sorted(buckets.items())), "settings": digest,
            "choice": str(session.get("gpu.fit"))}


def fit_stale_reason(saved: dict[str, Any] | None, now: dict[str, str]) -> str | None:
    """Why a saved fit no longer holds ("the GPU changed", …), None when it does."""
    fingerprint_saved = saved.get("fingerprint") if isinstance(saved, dict) else None
    if not isinstance(fingerprint_saved, dict) or not saved:
        return "not measured yet"
    if fingerprint_saved.get("choice") not in (None, now.get("choice")):
        return f"the search changed ({fingerprint_saved['choice']} → {now.get('choice')})"
    if fingerprint_saved.get("gpu") != now["gpu"]:
        return "the GPU changed"
    if fingerprint_saved.get("buckets") != now["buckets"]:
        return "the buckets changed"
    if fingerprint_saved.get("settings") != now["settings"]:
        return "settings that change memory or speed changed"
    if saved.get("partial"):
        return "the last search was stopped before it ended"
    return None
