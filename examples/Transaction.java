package com.example.bank;

import java.math.BigDecimal;
import java.time.Instant;

/** One entry of an account's history. Immutable. */
public final class Transaction {

    public enum Kind {
        DEPOSIT,
        WITHDRAWAL
    }

    private final Kind kind;
    private final BigDecimal amount;
    private final BigDecimal balanceAfter;
    private final Instant timestamp;

    public Transaction(Kind kind, BigDecimal amount, BigDecimal balanceAfter) {
        this(kind, amount, balanceAfter, Instant.now());
    }

    public Transaction(Kind kind, BigDecimal amount, BigDecimal balanceAfter, Instant timestamp) {
        this.kind = kind;
        this.amount = amount;
        this.balanceAfter = balanceAfter;
        this.timestamp = timestamp;
    }

    public Kind getKind() {
        return kind;
    }

    public BigDecimal getAmount() {
        return amount;
    }

    public BigDecimal getBalanceAfter() {
        return balanceAfter;
    }

    public Instant getTimestamp() {
        return timestamp;
    }

    /** The signed amount: positive for deposits, negative for withdrawals. */
    public BigDecimal signedAmount() {
        return kind == Kind.DEPOSIT ? amount : amount.negate();
    }

    @Override
    public String toString() {
        return String.format("%s %s %s (balance %s)", timestamp, kind, amount, balanceAfter);
    }
}
