"""Lists every dataset, item, sequence and export through the official `avala`
SDK, at AVALA_BASE_URL, and prints what it saw as one JSON document (uids and
statuses, sorted): the script a user points at `avala-mirror serve` unchanged.
Usage: python3 list_everything.py [page size]"""

import json
import sys

from avala import Client


def every(list_page, **kwargs):
    cursor = None
    while True:
        page = list_page(cursor=cursor, **kwargs)
        yield from page.items
        if not page.has_more:
            return
        cursor = page.next_cursor


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    client = Client()
    seen = {"datasets": [], "items": [], "sequences": [], "exports": []}
    for ds in every(client.datasets.list, limit=limit):
        seen["datasets"].append([ds.uid, ds.slug, ds.owner_name, ds.status])
        for item in every(client.datasets.list_items, owner=ds.owner_name, slug=ds.slug, limit=limit):
            seen["items"].append([item.uid, ds.slug])
        if ds.is_sequence:
            for seq in every(
                client.datasets.list_sequences, owner=ds.owner_name, slug=ds.slug, limit=limit
            ):
                seen["sequences"].append([seq.uid, seq.status])
    for export in every(client.exports.list, limit=limit):
        seen["exports"].append([export.uid, export.status])
    print(json.dumps({k: sorted(v) for k, v in seen.items()}))


if __name__ == "__main__":
    main()
