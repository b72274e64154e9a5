-- SendTransactional's idempotency keys are pruned past their horizon (services/delivery/
-- pruning.py); they are written in time order, so a BRIN index finds the old ones cheaply.
CREATE INDEX transactional_keys_created_at ON transactional_keys USING brin (created_at);
