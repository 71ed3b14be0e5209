"""Running in production: the inbox of the scheduled flow, the kept-alive Prefect server, scale-out on Dask."""
