"""The demo's accounts, shared by `seed_demo` (which creates them) and `demo_banner` (which prints them)."""

from accounts.models import Role

DEMO_PASSWORD = "idlefleet-demo"  # noqa: S105 - printed on screen for the local demo only
DEMO_USERS = [
    # (username, role, what they are in the demo story)
    ("admin", Role.STAFF, "staff: pricing, hardware profiles, the books"),
    ("alice", Role.CUSTOMER, "customer: document-embedding jobs"),
    ("bob", Role.CUSTOMER, "customer: image classification jobs"),
    ("olivia", Role.OWNER, "owner: a quarter of the simulated fleet"),
    ("oscar", Role.OWNER, "owner: half of the simulated fleet, HW4 and HW3"),
    ("otto", Role.OWNER, "owner: a quarter of the simulated fleet"),
]


def banner(base_url: str) -> str:
    width = max(len(u) for u, _, _ in DEMO_USERS)
    lines = [
        "",
        "=" * 78,
        f"  Idlefleet is running at {base_url}/",
        f"  Django admin: {base_url}/admin/      API docs: {base_url}/api/docs/",
        f"  Every demo account's password is: {DEMO_PASSWORD}",
        "",
    ]
    lines += [f"    {username:<{width}}  {label}" for username, _, label in DEMO_USERS]
    lines += [
        "",
        "  The customers pay from a prepaid balance ($10 to start) and bid again whenever a job ends; each job is",
        "  charged exactly what its work is worth, to the billionth of a cent: see a receipt, /owner/earnings/ and",
        "  /staff/finance/.",
        "",
        '  From a shell (README, "From the command line"):  pip install ./client',
        f"    idlefleet login --url {base_url} --username alice   then   idlefleet bids",
        "  Emails (password resets, jobs done) are printed in this log.",
    ]
    lines += ["", "  Press Ctrl-C to stop everything.", "=" * 78, ""]
    return "\n".join(lines)
