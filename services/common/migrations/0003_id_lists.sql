-- Lists of ids or small numbers handed to a statement as one text parameter, "a,b,NULL"
-- (services/common/db.py id_array): asyncpg encodes a list parameter element by element in
-- Python, and an array literal's input (`$1::text::uuid[]`) cost PostgreSQL ~1.0 µs a UUID;
-- splitting the text and casting the pieces costs ~0.6 (bench/RESULTS.md, issue 15).
-- `unnest(uuids($1), ints($2))`: SQL-standard bodies, inlined by the planner.
CREATE FUNCTION uuids(list text) RETURNS uuid[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN string_to_array(list, ',', 'NULL')::uuid[];
CREATE FUNCTION ints(list text) RETURNS int[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN string_to_array(list, ',', 'NULL')::int[];
CREATE FUNCTION bigints(list text) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN string_to_array(list, ',', 'NULL')::bigint[];
