#!/usr/bin/env python3
"""Renders bench/cluster.sh's JSON lines as the markdown of
bench/results/<date>-cluster.md: the chat table (same node vs across nodes,
per cluster size, CPU summed over every node) and the sessions table (RSS per
session per node)."""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict


def fmt(v, digits=3):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("records")
    ap.add_argument("--params", default="")
    args = ap.parse_args()
    recs = [json.loads(line) for line in open(args.records) if line.strip()]

    out = ["# Waxwing cluster benchmark", "", args.params, ""]

    chat = OrderedDict()
    for r in recs:
        if r.get("scenario") in ("chat", "chat-rate") and r.get("system") != "setup" \
                and "sessions" not in r.get("system", ""):
            chat[(r["system"], r["variant"], r["scenario"])] = r
    if chat:
        out += [
            "## 1:1 chat, both users on one node vs on two nodes",
            "",
            "Server CPU is summed over every node of the cluster and Redis (idle nodes "
            "included: heartbeats and registry replicas are part of the cost; Redis carries "
            "every cross-node message). \"no cluster\" is one node on the same PostgreSQL "
            "without `[cluster]` and without Redis.",
            "",
            "| Cluster | Users | msgs/s, saturation | msgs per cluster CPU-s | CPU µs per msg "
            "| p99 ms, saturation | p50 / p99 ms at fixed rate | CPU µs per msg at fixed rate |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        systems = list(OrderedDict.fromkeys(k[0] for k in chat))
        for s in systems:
            for v in ("same-node", "cross-node"):
                sat, rate = chat.get((s, v, "chat")), chat.get((s, v, "chat-rate"))
                if not sat and not rate:
                    continue
                g = lambda r, k: r.get(k) if r else None  # noqa: E731
                out.append(
                    f"| {s} | {v} | {fmt(g(sat, 'figure'))} | {fmt(g(sat, 'per_server_cpu_s'))} "
                    f"| {fmt(g(sat, 'server_cpu_us_per'))} | {fmt(g(sat, 'p99_ms'))} "
                    f"| {fmt(g(rate, 'p50_ms'))} / {fmt(g(rate, 'p99_ms'))} "
                    f"| {fmt(g(rate, 'server_cpu_us_per'))} |")
        out += ["", "Cost of a message across nodes relative to one on the same node "
                "(CPU µs per message, saturation):", ""]
        for s in systems:
            same, cross = chat.get((s, "same-node", "chat")), chat.get((s, "cross-node", "chat"))
            if same and cross and same.get("server_cpu_us_per"):
                ratio = cross["server_cpu_us_per"] / same["server_cpu_us_per"]
                out.append(f"- {s}: {fmt(cross['server_cpu_us_per'])} µs vs "
                           f"{fmt(same['server_cpu_us_per'])} µs = {ratio:.2f}×")
        out.append("")

    nodes = [r for r in recs if r.get("scenario") == "sessions"]
    if nodes:
        total = sum(r["sessions"] for r in nodes)
        out += [
            f"## {total:,} authenticated TLS sessions across {len(nodes)} nodes",
            "",
            "RSS per session = (RSS with every session held − RSS of the freshly started node) "
            "÷ the sessions on that node (from `waxwing cluster status`). Every node also keeps "
            "the registry replica of every other node's sessions, so this includes each node's "
            "share of the whole cluster's registry.",
            "",
            "| Node | Sessions | RSS before, MiB | RSS held, MiB | KiB per session | open files |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in nodes:
            per = (r["rss_after_kb"] - r["rss_before_kb"]) / r["sessions"] if r["sessions"] else None
            out.append(f"| {r['system']} | {r['sessions']:,} | {r['rss_before_kb'] / 1024:.1f} "
                       f"| {r['rss_after_kb'] / 1024:.1f} | {fmt(per)} | {r['open_files']:,} |")
        all_rss = sum(r["rss_after_kb"] - r["rss_before_kb"] for r in nodes)
        out += ["", f"Whole cluster: {all_rss / 1024:.0f} MiB for {total:,} sessions, "
                f"{all_rss / total:.1f} KiB per session.", ""]
        during = [r for r in recs if "sessions" in r.get("system", "") and r.get("scenario") == "chat-rate"]
        for r in during:
            out.append(f"Meanwhile, messages between two nodes ({r['system']}): "
                       f"{fmt(r.get('figure'))} msgs/s delivered of {fmt(r.get('rate'))} asked, "
                       f"p50 {fmt(r.get('p50_ms'))} ms, p99 {fmt(r.get('p99_ms'))} ms, "
                       f"{fmt(r.get('server_cpu_us_per'))} µs of cluster CPU per message.")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
