"""The split of a job's charge between the cars and the platform: exact to the n¢ (1 ¢ = 10⁹ n¢), and fair to within
a n¢."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing.settlement import WorkLine, largest_remainder, settle
from core.money import NC_PER_CENT, nc_from_mcents

CENT = NC_PER_CENT


def test_a_job_is_charged_its_work_times_the_clearing_prices_exactly():
    lines = [
        WorkLine(key="car1", ch=0.5, price_mcents=5_000, fee_pct=Decimal(15)),  # 2,500 m¢
        WorkLine(key="car2", ch=0.25, price_mcents=6_000, fee_pct=Decimal(15)),  # 1,500 m¢
        WorkLine(key="car1", ch=0.1, price_mcents=6_000, fee_pct=Decimal(15)),  # 600 m¢
    ]
    split = settle(lines, budget_nc=1_000 * CENT)
    assert split.work_mcents == Decimal(4_600)
    assert split.charge_nc == 4_600_000_000  # 4.6 ¢ exactly, not rounded to 5 ¢
    assert split.fee_nc == 690_000_000  # 15 %
    assert split.shares == {"car1": 2_635_000_000, "car2": 1_275_000_000}
    assert split.fee_nc + sum(split.shares.values()) == split.charge_nc


def test_the_charge_never_exceeds_the_budget():
    split = settle([WorkLine(key="car", ch=10.0, price_mcents=100_000, fee_pct=Decimal(15))], budget_nc=700 * CENT)
    assert split.charge_nc == 700 * CENT


def test_subcent_a_thousand_embeddings_are_charged_and_paid_to_the_nanocent():
    """MiniLM costs about 1.4e-8 CH per document: 1,000 documents at $0.015/CH are worth 2.1e-5 ¢. Before, this
    rounded to 0 ¢ and nobody was paid."""
    lines = [
        WorkLine(key="car1", ch=600 * 1.4e-8, price_mcents=1_500, fee_pct=Decimal(15)),
        WorkLine(key="car2", ch=400 * 1.4e-8, price_mcents=1_500, fee_pct=Decimal(15)),
    ]
    split = settle(lines, budget_nc=500 * CENT)
    assert split.charge_nc == 21_000  # n¢: $0.00000021
    assert split.fee_nc == 3_150
    assert split.shares == {"car1": 10_710, "car2": 7_140}
    assert split.fee_nc + sum(split.shares.values()) == split.charge_nc


def test_subcent_one_document_is_worth_more_than_nothing():
    split = settle([WorkLine(key="car", ch=1.4e-8, price_mcents=1_500, fee_pct=Decimal(15))], budget_nc=CENT)
    assert split.charge_nc == 21 and split.shares == {"car": 18} and split.fee_nc == 3


def test_half_a_nanocent_rounds_up():
    assert nc_from_mcents(Decimal("0.0000005")) == 1
    assert nc_from_mcents(Decimal("0.000000499")) == 0


def test_each_round_keeps_its_own_fee():
    lines = [
        WorkLine(key="a", ch=1.0, price_mcents=10_000, fee_pct=Decimal(10)),
        WorkLine(key="b", ch=1.0, price_mcents=10_000, fee_pct=Decimal(30)),
    ]
    split = settle(lines, budget_nc=10_000 * CENT)
    assert split.charge_nc == 20 * CENT
    assert split.fee_nc == 4 * CENT  # 1 + 3
    assert split.shares == {"a": 9 * CENT, "b": 7 * CENT}


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


@given(lines=lines_strategy, budget=st.integers(min_value=1, max_value=10_000_000 * CENT))
def test_the_charge_is_exactly_the_fee_plus_the_shares_and_each_share_is_within_a_nanocent(lines, budget):
    split = settle(lines, budget_nc=budget)
    assert split.fee_nc + sum(split.shares.values()) == split.charge_nc
    assert 0 <= split.charge_nc <= budget
    assert all(amount > 0 for amount in split.shares.values())
    if split.charge_nc and split.charge_nc < budget:
        assert abs(Decimal(split.charge_nc) - split.work_mcents * 10**6) <= Decimal("0.5")
    owners_total = split.charge_nc - split.fee_nc
    earned: dict = {}
    for line in lines:
        earned[line.key] = earned.get(line.key, Decimal(0)) + line.value_mcents * (100 - line.fee_pct) / 100
    total = sum(earned.values(), Decimal(0))
    for key, weight in earned.items():
        exact = Decimal(owners_total) * weight / total if total else Decimal(0)
        assert abs(split.shares.get(key, 0) - exact) < 1


@given(total=st.integers(min_value=0, max_value=10**9), weights=st.lists(st.integers(0, 10**6), max_size=8))
def test_largest_remainder_hands_out_every_nanocent(total, weights):
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
