"""What attribution is for, on any attributor's scores: data selection, contamination audits, mislabel cleaning,
saved runs and their qualitative HTML report (plus the demo).

Every function takes :class:`~datatrace.scores.Scores` (positive = proponent) or a score array and streams it in
blocks where the full matrix need not exist.
"""

from .cleaning import CleaningResult, mislabel_cleaning
from .contamination import ContaminationResult, contamination, fuse, plant_copies, plant_documents
from .qualitative import render_report, write_report
from .runs import Run, load_run, save_run
from .select import Selection, select, select_oracle, select_random

__all__ = [
    "CleaningResult",
    "ContaminationResult",
    "Run",
    "Selection",
    "contamination",
    "fuse",
    "load_run",
    "mislabel_cleaning",
    "plant_copies",
    "plant_documents",
    "render_report",
    "save_run",
    "select",
    "select_oracle",
    "select_random",
    "write_report",
]
