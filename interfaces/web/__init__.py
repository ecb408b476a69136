"""The admin web console (``/admin``) and the admin API it needs beyond ``/api/v1/admin``."""
