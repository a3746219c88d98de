"""Brand team dashboard views, one module per area; every view goes through ``access.brand_view``."""
