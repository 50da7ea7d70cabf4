"""What an ingest did, stored in the cohort's provenance and printed for the user."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fmgnn.cohort import CohortWriter


@dataclass
class IngestReport:
    """Counts and decisions of one ingest run.

    ``dropped_rois`` are regions removed from every subject; ``imputed`` maps a subject to the
    regions whose values were filled in; ``notes`` say how, in words.
    """

    adapter: str
    source: str
    output: str = ""
    n_subjects: int = 0
    n_scans: int = 0
    max_scans_per_subject: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    dropped_rois: list[str] = field(default_factory=list)
    imputed: dict[str, list[str]] = field(default_factory=dict)
    skipped_subjects: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count(self, writer: CohortWriter, label_names: list[str]) -> None:
        """Scans, subjects and classes as the writer has them."""
        self.n_scans, self.n_subjects = writer.n_written, len(writer.scans_per_subject)
        self.max_scans_per_subject = max(writer.scans_per_subject.values(), default=0)
        self.label_counts = dict(zip(label_names, writer.label_counts.tolist()))

    def provenance(self, **extra: Any) -> dict[str, Any]:
        record = asdict(self)
        record.update(created=datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra)
        return record

    def lines(self) -> list[str]:
        counts = ", ".join(f"{k}: {v}" for k, v in self.label_counts.items())
        scans = (f"{self.n_scans} scans of {self.n_subjects} subjects (up to {self.max_scans_per_subject} per "
                 "subject; folds keep a subject's scans together)" if self.n_scans > self.n_subjects
                 else f"{self.n_subjects} subjects, one scan each")
        out = [f"{self.adapter}: {scans} ({counts}) -> {self.output}"]
        if self.dropped_rois:
            out.append(f"dropped {len(self.dropped_rois)} regions missing in every subject: "
                       + ", ".join(self.dropped_rois))
        if self.imputed:
            out.append(f"imputed regions in {len(self.imputed)} subjects: "
                       + "; ".join(f"{s}: {', '.join(r)}" for s, r in self.imputed.items()))
        if self.skipped_subjects:
            out.append(f"skipped {len(self.skipped_subjects)} subjects: "
                       + "; ".join(f"{s} ({why})" for s, why in self.skipped_subjects.items()))
        out.extend(self.notes)
        return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
