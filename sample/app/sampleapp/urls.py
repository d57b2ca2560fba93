from django.urls import path
from pages import views

urlpatterns = [
    path("", views.status),
    path("health", views.health),
    path("slow", views.slow),
    path("visits/", views.visits),
    path("noise", views.noise),
]
