"""MLflow clients against modelreg: the MLflow Model Registry REST API, served by the API process.

Point `MLFLOW_REGISTRY_URI` (or `MLFLOW_TRACKING_URI`) at the API and MLflow's client registers
into the event-driven pipeline and loads `models:/NAME@champion` from the registry's copy. See
README "MLflow clients" for what each call does here.
"""

from fastapi import APIRouter

from . import artifacts, routes

router = APIRouter()
router.include_router(artifacts.router)
router.include_router(routes.router)  # last: it ends with the ENDPOINT_NOT_FOUND catch-all
