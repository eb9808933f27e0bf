"""One subpackage per device family; each registers its Device class under the ``hal.drivers`` entry points."""
