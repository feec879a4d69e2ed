"""Server frames against RFC 6455 §5.7's examples (every integration test also reads them
through aiohttp's client)."""

from __future__ import annotations

import pytest

from signaling.frames import PING, PING_FRAME, PONG, control_frame, text_frame


def test_a_single_frame_unmasked_text_message():
    assert text_frame(b"Hello") == bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])


def test_an_unmasked_ping_and_the_pong_a_server_answers_with():
    assert control_frame(PING, b"Hello") == bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    assert control_frame(PONG, b"Hello") == bytes([0x8A, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    assert PING_FRAME == bytes([0x89, 0x00])


def test_256_bytes_use_the_16_bit_length_and_64_kib_the_64_bit_one():
    # §5.7: "256 bytes binary message in a single unmasked frame" 0x82 0x7E 0x0100, and
    # "64KiB binary message" 0x82 0x7F 0x0000000000010000: the same lengths, as text (0x81)
    assert text_frame(bytes(256))[:4] == bytes([0x81, 0x7E, 0x01, 0x00])
    assert text_frame(bytes(65536))[:10] == bytes([0x81, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
    for n in (0, 125, 126, 65535, 65536):  # each boundary: header + payload, nothing more
        frame = text_frame(b"x" * n)
        assert len(frame) == n + (2 if n < 126 else 4 if n < 65536 else 10) and frame.endswith(b"x" * n)


def test_a_control_frame_longer_than_125_bytes_is_refused():
    with pytest.raises(ValueError):
        control_frame(PING, bytes(126))
