"""The official release: finding and downloading its files (`paths`), loading its styles on their
base models (`sd`, `pixart`)."""
