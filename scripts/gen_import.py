#!/usr/bin/env python3
"""Writes a JSON Lines import file of N lines (SPEC section 2 commands) for throughput runs.

Per member, 10 lines: register, open_wallet, top_up, pay x3, earn_miles, award_badge,
issue_coupon, redeem_coupon. Every line is valid, so `import` applies all of them.
Usage: scripts/gen_import.py LINES > file.jsonl
"""
import json
import sys

lines = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
members = (lines + 9) // 10
out = sys.stdout
written = 0
for i in range(members):
    m = f"m{i:08d}"
    day = 1 + i % 28
    at = lambda h: f"2019-07-{day:02d}T{h:02d}:00:00+09:00"
    cmds = [
        {"id": f"{m}-1", "type": "register", "member": m, "login": f"{m}@example.jp", "at": at(8)},
        {"id": f"{m}-2", "type": "open_wallet", "member": m, "at": at(9)},
        {"id": f"{m}-3", "type": "top_up", "member": m, "amount": 10000, "at": at(10)},
        {"id": f"{m}-4", "type": "pay", "member": m, "amount": 500, "merchant": "7-Eleven Umeda", "at": at(11)},
        {"id": f"{m}-5", "type": "pay", "member": m, "amount": 700, "merchant": "Loft Shibuya", "at": at(12)},
        {"id": f"{m}-6", "type": "pay", "member": m, "amount": 300, "merchant": "Denny's Ginza", "at": at(13)},
        {"id": f"{m}-7", "type": "earn_miles", "member": m, "miles": 50, "expires_at": "2020-07-01T00:00:00+09:00", "at": at(14)},
        {"id": f"{m}-8", "type": "award_badge", "member": m, "badge": "first-purchase", "at": at(15)},
        {"id": f"{m}-9", "type": "issue_coupon", "member": m, "coupon": "cp-1", "value": 300, "expires_at": "2019-12-31T00:00:00+09:00", "at": at(16)},
        {"id": f"{m}-10", "type": "redeem_coupon", "member": m, "coupon": "cp-1", "at": at(17)},
    ]
    for c in cmds:
        if written == lines:
            sys.exit(0)
        out.write(json.dumps(c, separators=(",", ":")) + "\n")
        written += 1
