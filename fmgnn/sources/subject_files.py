"""A folder of per-subject files joined to a participants (phenotype) table: what ``ingest matrices`` and
``ingest series`` share.

Files are found recursively. Each file belongs to the table row whose id its name contains as a whole:
the id starts and ends where the name changes between letters, digits and other characters, so
``sub-control51261_AAL116_correlation_matrix.mat`` holds the id ``51261`` (and not ``1261`` or ``116``
unless those are ids too), and ``NYU_0051036_rois_cc200.1D`` holds ``NYU_0051036``. Ids made only of
digits compare as numbers (``0051036`` is ``51036``). Where the table's ids do not appear in the names,
``id_pattern`` is a regular expression whose first group (or whole match) is the id.

What is not valid input, each named with its file or table row:

- a file whose name holds no id of the table, or two different ids;
- two files of one subject;
- a subject whose label is missing or not in ``label_map`` / ``label_names``;
- a file that cannot be read or has the wrong shape or values (the adapter's own checks).

With ``on_invalid=error`` (the default) the first of them stops the ingest before the cohort file
exists; with ``on_invalid=skip`` each is left out, counted and named in the report. Rows of the table
without a file are normal (a phenotype table covers the whole study) and only counted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fmgnn.cohort import CohortError
from fmgnn.sources.report import IngestReport, file_sha256

log = logging.getLogger(__name__)

# Codes of the ABIDE phenotypic files (ABIDE I/II, ABIDE Preprocessed), used when a column of that name is
# read and no map is given. Label order follows the map's order: label 0 is control.
KNOWN_CODES: dict[str, dict[str, str]] = {
    "DX_GROUP": {"2": "control", "1": "autism"},
    "SEX": {"1": "M", "2": "F"},
}
# How phenotype tables write a missing value (ABIDE: -9999; its FILE_ID column: no_filename).
MISSING_VALUES = {"", "-9999", "n/a", "na", "nan", "none", "null", "no_filename"}
AGE_COLUMNS = ("age", "age_at_scan")
SEX_COLUMNS = ("sex", "gender")


@dataclass
class SubjectFilesConfig:
    """Args:
        participants: The participants or phenotype table (CSV, or TSV by extension ``.tsv``/``.txt``).
        id_column: Column of ``participants`` holding the id found in each file's name.
        label_column: Column holding the class.
        site_column: Column holding the acquisition site; None: no site.
        age_column: Column holding age in years; ``auto``: a column named age or age_at_scan, if any.
        sex_column: Column holding sex; ``auto``: a column named sex or gender, if any.
        label_map: Class name of each value of ``label_column`` (``{1: autism, 2: control}``); default: the
            values themselves, or ABIDE's codes for a ``DX_GROUP`` column.
        label_names: Class names in label order (label 0 first); default: the map's order, else sorted.
        sex_map: Written sex of each value of ``sex_column``; default: as written, or ABIDE's codes for ``SEX``.
        id_pattern: Regular expression that finds the id in a file name (its first group, or the whole
            match); default: the table's ids found as whole parts of the name.
        file_glob: Pattern a file name must match (``*correlation*``, say).
        mat_variable: Variable to read from MATLAB files; default: the file's only variable.
        atlas: Atlas name: bundled (AAL-90, AAL-116; any spelling), any other (its regions numbered, or named
            by ``atlas_regions``), or ``none`` for placeholder names.
        atlas_regions: Region names: a list, or a labels file (one name per line, or a TSV/CSV with a name
            or label column).
        on_invalid: ``error`` stops at the first invalid file or row; ``skip`` leaves each out and names it.
        name: Cohort name; default: the output file's name (``abide`` for ``-o cohorts/abide.parquet``).
        task: The classification task in words.
    """

    participants: str = ""
    id_column: str = "participant_id"
    label_column: str = "group"
    site_column: str | None = None
    age_column: str | None = "auto"
    sex_column: str | None = "auto"
    label_map: dict[str, str] | None = None
    label_names: list[str] | None = None
    sex_map: dict[str, str] | None = None
    id_pattern: str | None = None
    file_glob: str = "*"
    mat_variable: str | None = None
    atlas: str = "none"
    atlas_regions: list[str] | str | None = None
    on_invalid: Literal["error", "skip"] = "error"
    name: str | None = None
    task: str = "classification of subjects from brain networks"


@dataclass
class SubjectFile:
    """One file and what the table says of its subject."""

    path: Path
    subject_id: str
    label: int
    age: float | None
    sex: str | None
    site: str | None


@dataclass
class SubjectFiles:
    """The files of a folder matched to the table, checked before any file is read."""

    folder: Path
    files: list[SubjectFile]
    label_names: list[str]
    table_sha256: str


class Invalid:
    """Collects invalid inputs: raises at the first one (``error``) or records it in the report (``skip``)."""

    def __init__(self, mode: str, report: IngestReport) -> None:
        self.mode, self.report = mode, report

    def __call__(self, key: str, why: str) -> None:
        if self.mode == "error":
            raise CohortError(f"{key}: {why} (on_invalid=skip leaves such inputs out and lists them)")
        self.report.skipped_subjects[key] = why


def canonical_id(value: str) -> str:
    """Ids compare as written, except that digit-only ids compare as numbers (leading zeros dropped)."""
    value = value.strip()
    return value.lstrip("0") or "0" if value.isdigit() else value


def _char_class(char: str) -> int:
    return 0 if char.isdigit() else 1 if char.isalpha() else 2


def ids_in_name(name: str, ids: set[str]) -> set[str]:
    """The ids of ``ids`` (canonical) that ``name`` holds as whole parts: cut where the character class
    (digit, letter, other) changes."""
    cuts = [0] + [i for i in range(1, len(name)) if _char_class(name[i]) != _char_class(name[i - 1])] + [len(name)]
    found = set()
    for a, start in enumerate(cuts):
        for end in cuts[a + 1:]:
            key = canonical_id(name[start:end])
            if key in ids:
                found.add(key)
    return found


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CohortError(f"participants: {path}: table not found")
    sep = "\t" if path.suffix.lower() in {".tsv", ".txt"} else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CohortError(f"participants: {path}: not a readable table ({err})") from None


def _column(table: pd.DataFrame, path: Path, setting: str, name: str | None, auto: tuple[str, ...] = ()) -> str | None:
    if name == "auto":
        return next((c for c in table.columns if c.strip().lower() in auto), None)
    if name is not None and name not in table.columns:
        raise CohortError(f"participants: {path}: {setting}={name!r} is not a column; columns are "
                          f"{', '.join(c for c in table.columns if c)}")
    return name


def _value(row: pd.Series, column: str | None) -> str | None:
    if column is None:
        return None
    value = str(row[column]).strip()
    return None if value.lower() in MISSING_VALUES else value


def _code_map(setting: dict[str, str] | None, column: str | None, report: IngestReport, what: str) -> dict | None:
    if setting is not None:
        return {str(k).strip(): str(v) for k, v in setting.items()}
    if column in KNOWN_CODES:
        codes = KNOWN_CODES[column]
        report.notes.append(f"{what}: column {column} read with ABIDE's codes "
                            + ", ".join(f"{k} = {v}" for k, v in codes.items()))
        return codes
    return None


def find_files(folder: Path, suffixes: set[str], file_glob: str, report: IngestReport) -> list[Path]:
    if not folder.is_dir():
        raise CohortError(f"{folder}: folder not found")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    found = [p for p in paths if p.suffix.lower() in suffixes and p.match(file_glob)]
    if len(found) < len(paths):
        report.notes.append(f"ignored {len(paths) - len(found)} files of {folder} that are not "
                            f"{'/'.join(sorted(suffixes))} files matching {file_glob!r}")
    if not found:
        raise CohortError(f"{folder}: no {'/'.join(sorted(suffixes))} file matching {file_glob!r} (searched "
                          "every subfolder)")
    return found


def match_subject_files(folder: str | Path, config: SubjectFilesConfig, suffixes: set[str],
                        report: IngestReport) -> SubjectFiles:
    """Pair each file with its table row; check ids and labels. No data file is read here."""
    folder, table_path = Path(folder), Path(config.participants)
    if not config.participants:
        raise CohortError("participants: give the participants or phenotype table (participants=path.csv)")
    table = read_table(table_path)
    id_column = _column(table, table_path, "id_column", config.id_column)
    label_column = _column(table, table_path, "label_column", config.label_column)
    site_column = _column(table, table_path, "site_column", config.site_column)
    age_column = _column(table, table_path, "age_column", config.age_column, AGE_COLUMNS)
    sex_column = _column(table, table_path, "sex_column", config.sex_column, SEX_COLUMNS)
    label_map = _code_map(config.label_map, label_column, report, "label")
    sex_map = _code_map(config.sex_map, sex_column, report, "sex") if sex_column else None
    label_names = config.label_names or (list(dict.fromkeys(label_map.values())) if label_map else None)
    invalid = Invalid(config.on_invalid, report)

    rows: dict[str, int] = {}  # canonical id -> table row; an id on several rows maps to -1
    for index, value in enumerate(table[id_column]):
        key = canonical_id(str(value))
        if key.lower() not in MISSING_VALUES:
            rows[key] = -1 if key in rows else index
    pattern = re.compile(config.id_pattern) if config.id_pattern else None

    by_subject: dict[str, Path] = {}
    matched: list[tuple[int, Path]] = []
    for path in find_files(folder, suffixes, config.file_glob, report):
        where = str(path)
        if pattern is not None:
            found = pattern.search(path.name)
            keys = {canonical_id(found.group(1) if found.re.groups else found.group(0))} if found else set()
        else:
            keys = ids_in_name(path.name, set(rows))
        if len(keys) > 1:  # a longer id that holds a shorter one (NYU_0051036 and 51036) is the one meant
            keys = {k for k in keys if not any(k != other and k in other for other in keys)}
        if not keys or (pattern is not None and next(iter(keys)) not in rows):
            what = f"the id {next(iter(keys))!r} found by id_pattern" if keys else "no id"
            invalid(where, f"{what} of column {id_column} of {table_path} in the file name"
                    + ("" if pattern else " (id_pattern= a regex finds ids in other names)"))
            continue
        if len(keys) > 1:
            invalid(where, f"the name holds several ids of {table_path}: {', '.join(sorted(keys))}; give "
                    "id_pattern= to say which")
            continue
        key = keys.pop()
        if rows[key] < 0:
            invalid(where, f"id {key} is on several rows of {table_path} (column {id_column})")
            continue
        if key in by_subject:
            invalid(where, f"subject {str(table[id_column].iloc[rows[key]]).strip()} already has the file "
                    f"{by_subject[key]}")
            continue
        by_subject[key] = path
        matched.append((rows[key], path))

    matched_rows = [(path, table.iloc[index]) for index, path in sorted(matched)]  # scans in the table's order
    values = {path: _value(row, label_column) for path, row in matched_rows}
    names = {path: (label_map.get(v, None) if label_map else v) for path, v in values.items() if v is not None}
    label_names = label_names or sorted(set(names.values()))
    files = []
    for path, row in matched_rows:
        subject, value = str(row[id_column]).strip(), values[path]
        where = f"{table_path}: subject {subject} (file {path})"
        if value is None:
            invalid(where, f"column {label_column} is empty")
            continue
        if names.get(path) not in label_names:
            known = f"label_map {label_map}" if label_map else f"label_names {label_names}"
            invalid(where, f"column {label_column} is {value!r}, not in {known}")
            continue
        age = _value(row, age_column)
        try:
            age_years = float(age) if age is not None else None
        except ValueError:
            raise CohortError(f"{where}: column {age_column} is {age!r}, not a number of years") from None
        sex = _value(row, sex_column)
        files.append(SubjectFile(path, subject, label_names.index(names[path]), age_years,
                                 sex_map.get(sex, sex) if sex_map and sex is not None else sex,
                                 _value(row, site_column)))
    if not files:
        raise CohortError(f"{folder}: no file matched a row of {table_path} with a label; the cohort would be empty")
    unmatched = len(rows) - len(by_subject)
    if unmatched > 0:
        report.notes.append(f"{unmatched} ids of {table_path} have no file in {folder} (not an error: a phenotype "
                            "table often covers a larger study)")
    return SubjectFiles(folder, files, label_names, file_sha256(table_path))


def read_mat_variable(path: Path, variable: str | None) -> np.ndarray:
    """One array of a MATLAB (v4-v7.2) file: the variable named, or the file's only one."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        contents = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError:  # scipy reads up to v7.2; v7.3 files are HDF5
        raise CohortError(f"{path}: a MATLAB v7.3 (HDF5) file, which scipy cannot read; save it with "
                          "save(..., '-v7') or as .npy") from None
    except (MatReadError, ValueError, OSError) as err:
        raise CohortError(f"{path}: not a readable MATLAB file ({err})") from None
    if variable is None:
        if len(contents) != 1:
            raise CohortError(f"{path}: holds the variables {', '.join(contents) or '(none)'}; say which with "
                              "mat_variable=")
        variable = next(iter(contents))
    if variable not in contents:
        raise CohortError(f"{path}: no variable {variable!r} (mat_variable); the file has {', '.join(contents)}")
    return np.asarray(contents[variable], dtype=np.float64)


def read_each(subject_files: SubjectFiles, read: Callable[[Path], Any], invalid: Invalid,
              every: int = 100) -> Iterator[tuple[SubjectFile, Any]]:
    """Each file's data as ``read`` returns it; a file it rejects (CohortError) is invalid input."""
    total = len(subject_files.files)
    for done, subject_file in enumerate(subject_files.files, start=1):
        try:
            data = read(subject_file.path)
        except CohortError as err:
            invalid(str(subject_file.path), str(err).removeprefix(f"{subject_file.path}: "))
            continue
        yield subject_file, data
        if done % every == 0 or done == total:
            log.info("read %d/%d files", done, total)
