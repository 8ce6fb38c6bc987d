// Cariflex EMS: FlexMeasures' maps load their tiles from Mapbox (the internet). Offline they show
// their markers on a plain local background instead (flexmeasures_cariflex/ui/offline.py).
function addTileLayer(leafletMap, mapboxAccessToken) {
    L.tileLayer('/cariflex/ui/tile.png', {
        attribution: 'no map tiles offline',
        tileSize: 512,
        maxZoom: 18,
        zoomOffset: -1
    }).addTo(leafletMap);
}
