-- Bookings of the gallery's rooms, which the new release writes.
CREATE TABLE bookings (
    id BIGINT PRIMARY KEY,
    room VARCHAR(40) NOT NULL,
    guest VARCHAR(120) NOT NULL,
    starts_at TIMESTAMP NOT NULL
);
CREATE INDEX bookings_room_starts ON bookings (room, starts_at);
