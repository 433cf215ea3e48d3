"""Server-side copies: one CopyObject up to the threshold, ranged part copies above it."""

from __future__ import annotations

import pytest

from shared.s3_copy_plan import GIB, MAX_PARTS, MIB, MIN_PART, copy_ranges


def _covers(ranges: list[tuple[int, int]], size: int) -> bool:
    expected = 0
    for first, last in ranges:
        if first != expected or last < first:
            return False
        expected = last + 1
    return expected == size


def test_up_to_the_threshold_one_copy_does() -> None:
    assert copy_ranges(0) is None
    assert copy_ranges(5 * GIB) is None
    assert copy_ranges(10 * MIB, threshold=10 * MIB) is None


def test_above_five_gib_the_object_is_copied_in_parts_covering_it_once() -> None:
    size = 5 * GIB + 1
    ranges = copy_ranges(size)
    assert ranges is not None and len(ranges) == 11
    assert _covers(ranges, size)
    assert all(last - first + 1 >= MIN_PART for first, last in ranges[:-1])


def test_a_small_threshold_copies_a_small_object_in_several_parts() -> None:
    ranges = copy_ranges(13 * MIB, threshold=6 * MIB, part_size=6 * MIB)
    assert ranges == [(0, 6 * MIB - 1), (6 * MIB, 12 * MIB - 1), (12 * MIB, 13 * MIB - 1)]


def test_parts_grow_to_stay_within_ten_thousand_and_never_shrink_below_five_mib() -> None:
    huge = 5 * 1024 * GIB  # 5 TiB, S3's largest object
    ranges = copy_ranges(huge, part_size=5 * MIB)
    assert ranges is not None and len(ranges) <= MAX_PARTS and _covers(ranges, huge)
    tiny = copy_ranges(20 * MIB, threshold=1, part_size=1)
    assert tiny is not None and [last - first + 1 for first, last in tiny] == [5 * MIB] * 4


@pytest.mark.parametrize(("size", "threshold"), [(-1, GIB), (10, 0), (10, 6 * GIB)])
def test_impossible_sizes_and_thresholds_are_refused(size: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        copy_ranges(size, threshold=threshold)
