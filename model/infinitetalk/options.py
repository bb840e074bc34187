"""The job fields InfiniteTalk takes besides the shared ones, each declared once (model/options.py).

`speaker_boxes` places two speakers in the frame: two boxes x_min,y_min,x_max,y_max in the
portrait's pixels (x across, y down), speaker 1's first, as the text
"x_min,y_min,x_max,y_max;x_min,y_min,x_max,y_max" (a job's fields are strings, numbers or
booleans). Without them the reference's default split is used (speaker 1 left, speaker 2 right).
The reference's own `bbox` reads its first and third numbers as rows: swap x and y to reuse one.
The text's form, whether the boxes fit the portrait and whether the job has two speakers at all
are checked by the backend when the job starts generating, before any model runs (`boxes`,
`check_boxes`): the declaration states a string, and the generic field checks hold to that.
Fields of other backends (wan-s2v's steps, guidance, solver, ...) are refused by name.
"""

from __future__ import annotations

import dataclasses
import math

from model.options import BackendOptions, InvalidOptionError, option

FIELD = "speaker_boxes"
_FORMAT = "two boxes x_min,y_min,x_max,y_max in the portrait's pixels, separated by ';', speaker 1's first"

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class InfiniteTalkOptions(BackendOptions):
    speaker_boxes: str | None = option(
        str, "where the two speakers are: " + _FORMAT + " (default: left half and right half)", max_length=200
    )

    def boxes(self) -> tuple[Box, Box] | None:
        """The two boxes, or None for the default split. Raises InvalidOptionError."""
        if self.speaker_boxes is None:
            return None
        parts = self.speaker_boxes.split(";")
        if len(parts) != 2:
            raise _refusal(f"it holds {len(parts)} box(es)")
        boxes = []
        for index, part in enumerate(parts, 1):
            try:
                numbers = tuple(float(value) for value in part.split(","))
            except ValueError:
                raise _refusal(f"box {index} ({part.strip()!r}) is not four numbers") from None
            if len(numbers) != 4 or not all(math.isfinite(value) and value >= 0 for value in numbers):
                raise _refusal(f"box {index} ({part.strip()!r}) is not four numbers of at least 0")
            x_min, y_min, x_max, y_max = numbers
            if x_max <= x_min or y_max <= y_min:
                raise _refusal(f"box {index} has x_max <= x_min or y_max <= y_min")
            boxes.append((x_min, y_min, x_max, y_max))
        return boxes[0], boxes[1]


def check_boxes(boxes: tuple[Box, Box] | None, speakers: int, width: int, height: int) -> None:
    """Refuse boxes with one speaker, or boxes outside a `width` x `height` portrait."""
    if boxes is None:
        return
    if speakers < 2:
        raise InvalidOptionError(
            FIELD, f"{FIELD} places two speakers, but this job has one speech; leave it out, or add "
            "audio_file_2/audio_url_2."
        )
    for index, (_, _, x_max, y_max) in enumerate(boxes, 1):
        if x_max > width or y_max > height:
            raise _refusal(f"box {index} reaches past the {width}x{height} portrait")


def _refusal(problem: str) -> InvalidOptionError:
    return InvalidOptionError(FIELD, f"{FIELD} must be {_FORMAT}, but {problem}.")
