"""Atlases the project knows by name: region names and the networks used for summaries and effects.

AAL-90 is the 90 cerebral regions of the AAL atlas (Tzourio-Mazoyer et al., 2002) in the atlas's
own order, the first 90 labels of AAL-116 (cerebellum and vermis left out), as BLEG uses it.
AAL-116 is the whole atlas: those 90, then its 26 cerebellar and vermis labels (91-116), the
parcellation of ABIDE's and many brain-network collections' AAL matrices.
The network grouping is the conventional lobe assignment of AAL regions, with a ``cerebellum``
group for labels 91-116. Centroid coordinates
are not bundled: a cohort that has them stores them in its metadata (``roi_coords``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fmgnn.errors import InputError

_AAL_BASES = [
    "Precentral", "Frontal_Sup", "Frontal_Sup_Orb", "Frontal_Mid", "Frontal_Mid_Orb",
    "Frontal_Inf_Oper", "Frontal_Inf_Tri", "Frontal_Inf_Orb", "Rolandic_Oper", "Supp_Motor_Area",
    "Olfactory", "Frontal_Sup_Medial", "Frontal_Med_Orb", "Rectus", "Insula", "Cingulum_Ant",
    "Cingulum_Mid", "Cingulum_Post", "Hippocampus", "ParaHippocampal", "Amygdala", "Calcarine",
    "Cuneus", "Lingual", "Occipital_Sup", "Occipital_Mid", "Occipital_Inf", "Fusiform",
    "Postcentral", "Parietal_Sup", "Parietal_Inf", "SupraMarginal", "Angular", "Precuneus",
    "Paracentral_Lobule", "Caudate", "Putamen", "Pallidum", "Thalamus", "Heschl", "Temporal_Sup",
    "Temporal_Pole_Sup", "Temporal_Mid", "Temporal_Pole_Mid", "Temporal_Inf",
]
AAL90_ROI_NAMES: list[str] = [f"{base}_{side}" for base in _AAL_BASES for side in ("L", "R")]

_AAL_LOBE_OF_BASE = {
    **dict.fromkeys(_AAL_BASES[0:14], "frontal"),
    **dict.fromkeys(_AAL_BASES[14:21], "limbic"),  # insula, cingulate, hippocampal, amygdala
    **dict.fromkeys(_AAL_BASES[21:28], "occipital"),
    **dict.fromkeys(_AAL_BASES[28:34], "parietal"),
    "Paracentral_Lobule": "frontal",
    **dict.fromkeys(_AAL_BASES[35:39], "subcortical"),
    **dict.fromkeys(_AAL_BASES[39:45], "temporal"),
}


# AAL labels 91-116, in the atlas's order: the cerebellar hemispheres' lobules, then the vermis (no side).
AAL_CEREBELLUM_NAMES: list[str] = [
    f"Cerebelum_{lobule}_{side}" for lobule in ("Crus1", "Crus2", "3", "4_5", "6", "7b", "8", "9", "10")
    for side in ("L", "R")
] + [f"Vermis_{lobule}" for lobule in ("1_2", "3", "4_5", "6", "7", "8", "9", "10")]
AAL116_ROI_NAMES: list[str] = AAL90_ROI_NAMES + AAL_CEREBELLUM_NAMES


def _networks(names: list[str], lobe_of_base: dict[str, str]) -> dict[str, list[int]]:
    networks: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        lobe = "cerebellum" if name.startswith(("Cerebelum_", "Vermis_")) else lobe_of_base[name[:-2]]
        networks.setdefault(lobe, []).append(index)
    return networks


@dataclass(frozen=True)
class Atlas:
    """A parcellation: ordered region names, optional MNI centroids, named groups of regions."""

    name: str
    roi_names: list[str]
    networks: dict[str, list[int]] = field(default_factory=dict)
    roi_coords: list[list[float]] | None = None

    @property
    def n_rois(self) -> int:
        return len(self.roi_names)


AAL90 = Atlas("AAL-90", AAL90_ROI_NAMES, _networks(AAL90_ROI_NAMES, _AAL_LOBE_OF_BASE))
AAL116 = Atlas("AAL-116", AAL116_ROI_NAMES, _networks(AAL116_ROI_NAMES, _AAL_LOBE_OF_BASE))

ATLASES = {"AAL-90": AAL90, "AAL-116": AAL116}


def _spelling(name: str) -> str:
    return re.sub(r"[-_ ]", "", name).upper()


def known_atlas(name: str) -> Atlas | None:
    """The bundled atlas of that name, however it is spelled (``AAL116``, ``aal-116``), else None."""
    return next((atlas for key, atlas in ATLASES.items() if _spelling(key) == _spelling(name)), None)


def get_atlas(name: str) -> Atlas:
    atlas = known_atlas(name)
    if atlas is None:
        raise InputError(f"unknown atlas {name!r}; known: {', '.join(ATLASES)}")
    return atlas


def numbered_atlas(name: str, n_rois: int) -> Atlas:
    """An atlas known only by name (``CC200``): its regions numbered from 1 as the atlas numbers its labels."""
    width = len(str(n_rois))
    return Atlas(name, [f"{name}_{i:0{width}d}" for i in range(1, n_rois + 1)])


def generic_atlas(n_rois: int, name: str = "unnamed") -> Atlas:
    """Placeholder names ``ROI_000``... for cohorts that come without an atlas."""
    return Atlas(name, [f"ROI_{i:03d}" for i in range(n_rois)])


def named_atlas(name: str, regions: list[str] | str | None, n_rois: int,
                header: list[str] | None = None, number_unknown: bool = False) -> Atlas:
    """The atlas an ingest names: ``none`` (placeholder names, or the file header's), a known atlas, or any
    other name with its region names: a list, or a labels file (one name per line, or a TSV/CSV with a
    ``name`` or ``label`` column), or the data file's header. With ``number_unknown`` an unknown atlas
    without names gets numbered regions (``CC200_001``...) instead of an error."""
    if name == "none" and regions is None:
        return Atlas("unnamed", header) if header else generic_atlas(n_rois)
    if known_atlas(name) is not None and regions is None:
        return known_atlas(name)
    names = read_region_names(regions) if regions is not None else header
    if names is None and number_unknown:
        return numbered_atlas(name, n_rois)
    if names is None:
        raise InputError(f"unknown atlas {name!r}: give its region names (atlas_regions=[...] or "
                         f"atlas_regions=labels.tsv), or use one of: {', '.join(ATLASES)}, none")
    if len(names) != n_rois:
        raise InputError(f"atlas {name!r}: {len(names)} region names for data of {n_rois} regions")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"atlas {name!r}: region names repeat ({repeated[:5]})")
    return Atlas("unnamed" if name == "none" else name, list(names))


def read_region_names(regions: list[str] | str) -> list[str]:
    """Region names from a list, or from a labels file (plain lines, or a table's name/label column)."""
    if isinstance(regions, list):
        return [str(r).strip() for r in regions]
    from pathlib import Path

    path = Path(regions)
    if not path.is_file():
        raise InputError(f"atlas_regions: {path}: labels file not found")
    lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    sep = "\t" if path.suffix.lower() == ".tsv" else "," if path.suffix.lower() == ".csv" else None
    if sep is None:
        return [line.strip() for line in lines]
    header = [c.strip().lower() for c in lines[0].split(sep)]
    column = next((header.index(c) for c in ("name", "label", "region", "roi") if c in header), None)
    if column is None:
        raise InputError(f"atlas_regions: {path}: no name, label, region or roi column (columns: {lines[0]})")
    return [line.split(sep)[column].strip() for line in lines[1:]]
