"""Read a parkade Parquet lake with pyarrow, independently of parkade's own code.

Usage: read_lake.py PATH   (PATH: a generation's `events` folder, local)
Prints JSON: the row count, the schema, the partition values, and every row's main
fields sorted by offset.
"""
import json
import sys

import pyarrow.dataset as ds

path = sys.argv[1]
dataset = ds.dataset(path, format="parquet", partitioning="hive")
table = dataset.to_table().sort_by("offset")
rows = []
cols = table.to_pydict()
for i in range(table.num_rows):
    rows.append(
        {
            "offset": cols["offset"][i],
            "event_id": cols["event_id"][i],
            "lot_id": cols["lot_id"][i],
            "event_type": cols["event_type"][i],
            "occupancy": cols["occupancy"][i],
            "capacity": cols["capacity"][i],
            "count": cols["count"][i],
            "name": cols["name"][i],
            "occurred_at": cols["occurred_at"][i].isoformat(),
            "date": str(cols["date"][i]),
        }
    )
print(
    json.dumps(
        {
            "rows": table.num_rows,
            "files": len(dataset.files),
            "schema": [[f.name, str(f.type)] for f in table.schema],
            "records": rows,
        }
    )
)
