"""FlatView rendering: table-driven cases and hypothesis against a per-address reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.reference_vmm.memory import AddressSpace, FlatView, MemoryRegion, transaction
from vmtrace.reference_vmm.memory.flatview import render


def io(name: str, size: int) -> MemoryRegion:
    return MemoryRegion.io(None, name, size, lambda o, s: 0, lambda o, v, s: None)


def spans(root: MemoryRegion) -> list[tuple[int, int, str, int]]:
    return [(r.start, r.end, r.mr.name, r.offset_in_region) for r in render(root)]


# -- the reference: resolve one address by walking the tree -----------------
def resolve(mr: MemoryRegion, base: int, addr: int) -> tuple[str, int] | None:
    """(region name, offset) that ``addr`` reaches, by the documented rules alone."""
    if not mr.enabled or not base <= addr < base + mr.size:
        return None
    if mr.alias is not None:
        return resolve(mr.alias, base - mr.alias_offset, addr)
    # Highest priority first; among equal priorities the one added last.
    for sub in sorted(mr.subregions, key=lambda s: (-s.priority, -s._seq)):
        hit = resolve(sub, base + sub.addr, addr)
        if hit is not None:
            return hit
    if mr.terminates:
        return (mr.name, addr - base)
    return None


def flat_resolve(view: FlatView, addr: int) -> tuple[str, int] | None:
    fr = view.lookup(addr)
    if fr is None:
        return None
    return (fr.mr.name, addr - fr.start + fr.offset_in_region)


def region_name(view: FlatView, addr: int) -> str | None:
    fr = view.lookup(addr)
    return None if fr is None else fr.mr.name


# -- table-driven -----------------------------------------------------------
def test_disjoint_regions_in_address_order() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    root.add_subregion(0x80, io("b", 0x10))
    root.add_subregion(0x10, io("a", 0x10))
    assert spans(root) == [(0x10, 0x20, "a", 0), (0x80, 0x90, "b", 0)]


def test_higher_priority_covers_lower() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    root.add_subregion_overlap(0x00, io("low", 0x40), 0)
    root.add_subregion_overlap(0x10, io("high", 0x10), 1)
    assert spans(root) == [(0x00, 0x10, "low", 0), (0x10, 0x20, "high", 0), (0x20, 0x40, "low", 0x20)]


def test_priority_beats_insertion_order() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    root.add_subregion_overlap(0x10, io("high", 0x10), 5)
    root.add_subregion_overlap(0x00, io("low", 0x40), 0)  # added later, still below
    assert spans(root)[1] == (0x10, 0x20, "high", 0)


def test_equal_priority_newest_wins() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    root.add_subregion(0x00, io("old", 0x20))
    root.add_subregion(0x10, io("new", 0x20))
    assert spans(root) == [(0x00, 0x10, "old", 0), (0x10, 0x30, "new", 0)]


def test_terminating_parent_shows_through_holes() -> None:
    root = io("root", 0x100)  # like QEMU's "io": unassigned ports answer
    root.add_subregion(0x40, io("dev", 0x8))
    assert spans(root) == [(0, 0x40, "root", 0), (0x40, 0x48, "dev", 0), (0x48, 0x100, "root", 0x48)]


def test_container_holes_fall_through_to_lower_sibling() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    root.add_subregion_overlap(0, io("ram", 0x100), 0)
    bridge = MemoryRegion.container_region(None, "bridge", 0x80)
    bridge.add_subregion(0x20, io("bar", 0x10))
    root.add_subregion_overlap(0x40, bridge, 1)
    assert spans(root) == [(0, 0x60, "ram", 0), (0x60, 0x70, "bar", 0), (0x70, 0x100, "ram", 0x70)]


def test_alias_maps_a_window_of_its_target() -> None:
    root = MemoryRegion.container_region(None, "root", 0x1000)
    target = io("target", 0x100)
    root.add_subregion(0x0, target)
    root.add_subregion(0x800, MemoryRegion.alias_region(None, "window", target, 0x40, 0x20))
    assert spans(root)[-1] == (0x800, 0x820, "target", 0x40)


def test_subregion_clipped_by_its_container() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    small = MemoryRegion.container_region(None, "small", 0x10)
    small.add_subregion(0x8, io("big", 0x100))
    root.add_subregion(0x20, small)
    assert spans(root) == [(0x28, 0x30, "big", 0)]


def test_disabled_region_is_absent() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    dev = io("dev", 0x10)
    root.add_subregion(0, dev)
    dev.set_enabled(False)
    assert spans(root) == []


def test_lookup_is_a_binary_search_over_ranges() -> None:
    root = io("root", 0x10000)
    for i in range(100):
        root.add_subregion(i * 0x100, io(f"d{i}", 0x10))
    view = FlatView.from_root(root)
    assert region_name(view, 0x3205) == "d50"
    assert region_name(view, 0x3210) == "root"
    assert view.lookup(0x10000) is None


def test_one_rebuild_per_transaction() -> None:
    root = io("root", 0x1000)
    space = AddressSpace(root, "test")
    try:
        before = space.rebuilds
        with transaction():
            for i in range(10):
                root.add_subregion(i * 0x10, io(f"d{i}", 0x8))
        assert space.rebuilds == before + 1
        assert region_name(space.current_map, 0x94) == "d9"
        root.add_subregion(0x200, io("late", 0x8))  # outside a transaction: its own commit
        assert space.rebuilds == before + 2
    finally:
        space.destroy()


def test_set_address_moves_a_region() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    dev = io("dev", 0x10)
    root.add_subregion(0, dev)
    dev.set_address(0x80)
    assert spans(root) == [(0x80, 0x90, "dev", 0)]


# -- hypothesis: random trees against the reference ---------------------------
SPACE = 0x100


@st.composite
def trees(draw: st.DrawFn) -> MemoryRegion:
    counter = iter(range(10_000))
    leaves: list[MemoryRegion] = []

    def region(depth: int, size: int) -> MemoryRegion:
        kind = draw(st.sampled_from(["io", "container", "alias"] if depth < 3 else ["io"]))
        name = f"r{next(counter)}"
        if kind == "alias" and leaves:
            target = draw(st.sampled_from(leaves))
            offset = draw(st.integers(0, max(0, target.size - 1)))
            return MemoryRegion.alias_region(None, name, target, offset, size)
        if kind == "container":
            mr = MemoryRegion.container_region(None, name, size) if draw(st.booleans()) else io(name, size)
            for _ in range(draw(st.integers(0, 4))):
                sub_size = draw(st.integers(1, size))
                offset = draw(st.integers(0, size - 1))
                prio = draw(st.integers(-1, 2))
                mr.add_subregion_overlap(offset, region(depth + 1, sub_size), prio)
            return mr
        mr = io(name, size)
        leaves.append(mr)
        return mr

    root = MemoryRegion.container_region(None, "root", SPACE)
    for _ in range(draw(st.integers(1, 6))):
        size = draw(st.integers(1, SPACE))
        root.add_subregion_overlap(draw(st.integers(0, SPACE - 1)), region(1, size), draw(st.integers(-1, 2)))
    for mr in leaves:
        if draw(st.integers(0, 9)) == 0:
            mr.enabled = False
    return root


@settings(max_examples=150, deadline=None)
@given(trees())
def test_flatview_matches_reference_renderer(root: MemoryRegion) -> None:
    view = FlatView.from_root(root)
    for addr in range(SPACE):
        assert flat_resolve(view, addr) == resolve(root, 0, addr), hex(addr)


@settings(max_examples=150, deadline=None)
@given(trees())
def test_flatview_ranges_are_sorted_disjoint_and_merged(root: MemoryRegion) -> None:
    ranges = FlatView.from_root(root).ranges
    for a, b in zip(ranges, ranges[1:], strict=False):
        assert a.end <= b.start
        contiguous = a.end == b.start and a.mr is b.mr and a.offset_in_region + (a.end - a.start) == b.offset_in_region
        assert not contiguous, "adjacent ranges of one region should be merged"
    assert all(r.start < r.end for r in ranges)
