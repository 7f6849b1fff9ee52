"""P-DATA-TF bodies split in place (PS3.8 9.3.5.1): each item's context ID, control header and
fragment, or None when the item lengths do not add up to the PDU."""

from __future__ import annotations

import struct

import pytest

from edge_forwarder.intake.association import pdv_items


def _item(context_id: int, control: int, fragment: bytes) -> bytes:
    return struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment


def test_items_come_back_in_order_with_their_context_and_control_header() -> None:
    # Given a PDU body with a last command fragment and a data set fragment
    body = bytearray(_item(1, 0x03, b"\x01\x02") + _item(3, 0x00, b"pixels"))
    # When it is split
    items = pdv_items(body)
    # Then each item is its context ID and its control header followed by its fragment
    assert items is not None
    assert [(context_id, bytes(value)) for context_id, value in items] == [
        (1, b"\x03\x01\x02"),
        (3, b"\x00pixels"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        struct.pack(">LB", 1, 1),  # an item shorter than its context ID and control header
        struct.pack(">LBB", 1, 1, 0) + b"\x00" * 8,  # a length of 1: no room for the header
        _item(1, 0x03, b"ab")[:-1],  # the last item cut short
        _item(1, 0x03, b"ab") + b"\x00\x00\x00",  # bytes left over that hold no item
        struct.pack(">LBB", 0xFFFF, 1, 0x03) + b"\x00" * 16,  # an item past the end of the PDU
    ],
    ids=["item_too_short", "length_of_one", "cut_short", "trailing_bytes", "past_the_pdu"],
)
def test_a_body_whose_item_lengths_do_not_add_up_is_refused(body: bytes) -> None:
    assert pdv_items(bytearray(body)) is None
