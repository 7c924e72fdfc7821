from rest_framework.routers import DefaultRouter

from markets.api import AwardViewSet, BidViewSet

router = DefaultRouter()
router.register("markets/bids", BidViewSet, basename="markets-bid")
router.register("markets/awards", AwardViewSet, basename="markets-award")
urlpatterns = router.urls
