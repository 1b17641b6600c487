-- The simulated payment provider's own books, in a database of its own as an external
-- provider's would be. Money is conserved: credit + captured − refunded = deposits.
CREATE TABLE provider_accounts (
  user_id text PRIMARY KEY,
  credit bigint NOT NULL CHECK (credit >= 0),
  deposited bigint NOT NULL CHECK (deposited >= 0)
);

-- One row per payment id: a retried charge returns the first answer, never charges twice.
CREATE TABLE provider_charges (
  payment_id uuid PRIMARY KEY,
  user_id text NOT NULL,
  amount bigint NOT NULL CHECK (amount >= 0),
  status text NOT NULL CHECK (status IN ('captured', 'declined', 'refunded')),
  reason text,
  at timestamptz NOT NULL DEFAULT now()
);
