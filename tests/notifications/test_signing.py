"""The signature a receiver checks (notifications/signing.py): what Idlefleet sends verifies, a forgery does not."""

import hashlib
import hmac
import time

from notifications.signing import sign, verify

SECRET = "whsec_test-secret"
BODY = b'{"id":"evt_1","type":"bid.completed","data":{"bid":{"id":7}}}'


def test_a_signed_body_verifies_as_the_readme_documents_it():
    t = int(time.time())
    header = sign(SECRET, BODY, t)

    expected = hmac.new(SECRET.encode(), f"{t}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"
    assert verify(SECRET, BODY, header)


def test_a_wrong_secret_an_altered_body_or_a_stale_timestamp_is_refused():
    now = int(time.time())
    header = sign(SECRET, BODY, now)

    assert not verify("whsec_another-secret", BODY, header)
    assert not verify(SECRET, BODY.replace(b"7", b"8"), header)
    stale = sign(SECRET, BODY, now - 301)
    assert not verify(SECRET, BODY, stale)
    assert verify(SECRET, BODY, stale, tolerance_s=600)  # only the age refused it


def test_a_header_that_is_not_a_signature_is_refused():
    t = int(time.time())
    good = sign(SECRET, BODY, t).split(",v1=")[1]
    for header in ("", "t=,v1=", f"v1={good}", f"t={t}", f"t=abc,v1={good}", f"t={t},v1=00{good[2:]}"):
        assert not verify(SECRET, BODY, header), header
    # A second signature beside the right one (as while a secret is rotated) still verifies.
    assert verify(SECRET, BODY, f"t={t},v1={'0' * 64},v1={good}")
