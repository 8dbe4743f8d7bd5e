"""The split of a job's charge between the cars and the platform: exact to the cent, and fair to within a cent."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing.settlement import WorkLine, cents_half_up, largest_remainder, settle


def test_a_job_is_charged_its_work_times_the_clearing_prices_rounded_once():
    lines = [
        WorkLine(key="car1", ch=0.5, price_mcents=5_000, fee_pct=Decimal(15)),  # 2,500 m¢
        WorkLine(key="car2", ch=0.25, price_mcents=6_000, fee_pct=Decimal(15)),  # 1,500 m¢
        WorkLine(key="car1", ch=0.1, price_mcents=6_000, fee_pct=Decimal(15)),  # 600 m¢
    ]
    split = settle(lines, authorized_cents=1_000)
    assert split.work_mcents == Decimal(4_600)
    assert split.charge_cents == 5  # 4.6 ¢, half-up
    assert split.fee_cents == 1  # 15 % of 5 ¢ = 0.75 ¢
    assert split.shares == {"car1": 3, "car2": 1}
    assert split.fee_cents + sum(split.shares.values()) == split.charge_cents


def test_the_charge_never_exceeds_the_authorization():
    split = settle([WorkLine(key="car", ch=10.0, price_mcents=100_000, fee_pct=Decimal(15))], authorized_cents=700)
    assert split.charge_cents == 700


def test_work_below_half_a_cent_is_not_charged_and_nobody_is_owed():
    split = settle([WorkLine(key="car", ch=3e-5, price_mcents=5_000, fee_pct=Decimal(15))], authorized_cents=100)
    assert (split.charge_cents, split.fee_cents, split.shares) == (0, 0, {})
    assert split.work_mcents == Decimal("0.15000")


def test_half_a_cent_rounds_up():
    assert cents_half_up(Decimal(500)) == 1
    assert cents_half_up(Decimal("499.999")) == 0


def test_each_round_keeps_its_own_fee():
    lines = [
        WorkLine(key="a", ch=1.0, price_mcents=10_000, fee_pct=Decimal(10)),
        WorkLine(key="b", ch=1.0, price_mcents=10_000, fee_pct=Decimal(30)),
    ]
    split = settle(lines, authorized_cents=10_000)
    assert split.charge_cents == 20
    assert split.fee_cents == 4  # 1 + 3
    assert split.shares == {"a": 9, "b": 7}


lines_strategy = st.lists(
    st.builds(
        WorkLine,
        key=st.sampled_from(["v1:o1", "v2:o1", "v3:o2", "v4:o3"]),
        ch=st.floats(min_value=1e-9, max_value=50.0, allow_nan=False),
        price_mcents=st.integers(min_value=1, max_value=100_000),
        fee_pct=st.sampled_from([Decimal(0), Decimal("12.5"), Decimal(15), Decimal(50)]),
    ),
    max_size=12,
)


@given(lines=lines_strategy, authorized=st.integers(min_value=50, max_value=10_000_000))
def test_the_charge_is_exactly_the_fee_plus_the_shares_and_each_share_is_within_a_cent(lines, authorized):
    split = settle(lines, authorized_cents=authorized)
    assert split.fee_cents + sum(split.shares.values()) == split.charge_cents
    assert 0 <= split.charge_cents <= authorized
    assert all(cents > 0 for cents in split.shares.values())
    if split.charge_cents and split.charge_cents < authorized:
        assert abs(Decimal(split.charge_cents) - split.work_mcents / 1000) <= Decimal("0.5")
    owners_total = split.charge_cents - split.fee_cents
    earned: dict = {}
    for line in lines:
        earned[line.key] = earned.get(line.key, Decimal(0)) + line.value_mcents * (100 - line.fee_pct) / 100
    total = sum(earned.values(), Decimal(0))
    for key, weight in earned.items():
        exact = Decimal(owners_total) * weight / total if total else Decimal(0)
        assert abs(split.shares.get(key, 0) - exact) < 1


@given(total=st.integers(min_value=0, max_value=10**9), weights=st.lists(st.integers(0, 10**6), max_size=8))
def test_largest_remainder_hands_out_every_cent(total, weights):
    shares = largest_remainder(total, {i: Decimal(w) for i, w in enumerate(weights)})
    if sum(weights) and total:
        assert sum(shares.values()) == total
    else:
        assert shares == {}


def test_the_customer_never_pays_above_the_price_of_their_own_allocation_of_a_slice():
    from billing.settlement import customer_price_mcents

    assert customer_price_mcents(5000) == 5000  # the first car's result: its own allocation's price
    assert customer_price_mcents(8000, 1000) == 1000  # a dearer replica outvoted it: the customer's price holds
    assert customer_price_mcents(800, 1000) == 800  # a cheaper one: the cheaper price
    assert customer_price_mcents(9000, None, 4000) == 4000  # reissued dearer after a failed known answer
    assert customer_price_mcents(9000, 6000, None, 4000) == 4000  # a replica of such a reissue
