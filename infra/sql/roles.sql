-- Login users for a pgstac database that `terramesh-stac db start` did not create (e.g. the
-- docker-compose `database` service). The same roles the embedded cluster gets
-- (catalog/database.py bootstrap): run once as a superuser, after pgstac is installed:
--
--   psql "$ADMIN_DSN" -v loader_password=... -v api_password=... -f infra/sql/roles.sql
--
-- then point TERRAMESH_DSN (loader, `convert --load` / `load`) and TERRAMESH_API_DSN
-- (the service) at them.
CREATE ROLE terramesh_loader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'loader_password';
CREATE ROLE terramesh_api LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'api_password';
GRANT pgstac_ingest TO terramesh_loader;
GRANT pgstac_read TO terramesh_api;
-- role settings are not inherited from the pgstac groups: set them on the users
ALTER ROLE terramesh_loader SET search_path TO pgstac, public;
ALTER ROLE terramesh_api SET search_path TO pgstac, public;
GRANT CONNECT ON DATABASE :"DBNAME" TO terramesh_loader, terramesh_api;
